"""The Litestar application factory.

The lifespan opens the key store, creates first-run keys, and loads the engine in the background, so
``/health/live`` answers at once and ``/health/ready`` turns 200 when models are warm and the index is open.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import msgspec
import structlog
from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.static_files import create_static_files_router

from app import models, schemas
from app.auth import KeyStore
from app.bounded_work import BoundedWork
from app.errors import EXCEPTION_HANDLERS
from app.fleet import FleetSignals, Follower
from app.hooks import check_api_request, reject_unknown_query
from app.metrics import Metrics
from app.models import apply_pins
from app.observability import RequestContextMiddleware
from app.routes import ops
from app.routes.admin import reload_models
from app.routes.answers import AnswerController, DocumentController
from app.routes.audit import AuditController, feedback
from app.routes.items import ItemController
from app.routes.recommend import RecommendationController
from app.routes.reports import compliance_report, drift_report
from app.settings import Settings
from app.state import Services, provide_services
from app.web import pages
from app.web.console import ConsoleController
from app.web.demo import DemoController
from app.web.headers import SecurityHeadersMiddleware
from app.web.sessions import SessionStore
from app.workers import inference_client
from governance.audit import AuditLog
from governance.report import MEDIA_TYPES as REPORT_MEDIA_TYPES
from retrieval.answers import AnswerService, Generator, LocalBackend, RemoteBackend
from retrieval.answers.reading import ReaderBackend
from retrieval.batcher import BatchObserver
from retrieval.encoder import Encoder
from retrieval.engine import RetrievalEngine
from retrieval.errors import BackendUnavailableError

logger = structlog.get_logger(__name__)
INITIAL_KEYS_FILE = "initial-keys.txt"


def bootstrap_keys(keys: KeyStore, state_dir: Path) -> Path | None:
    """On first start (no keys at all), create a frontend and an admin key and write them to a 0600 file.

    Returns:
        The file's path, or ``None`` when keys already existed.
    """
    if keys.count() > 0:
        return None
    frontend = keys.create("frontend", label="bootstrap")
    admin = keys.create("admin", label="bootstrap")
    path = state_dir / INITIAL_KEYS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"CANDOR_FRONTEND_KEY={frontend}\nCANDOR_ADMIN_KEY={admin}\n")
    return path


def build_answer_service(
    settings: Settings,
    engine: RetrievalEngine,
    observer: BatchObserver | None = None,
    reader: ReaderBackend | None = None,
) -> AnswerService:
    """The answer service with the backends the settings enable (``extractive`` always, read by ``reader`` if any)."""
    generators: dict[str, Generator] = {}
    local = settings.generator.local
    if local.enabled:
        generators["local"] = LocalBackend(
            settings.local_generator_config(),
            settings.batching.generator.to_config(),
            cache_root=settings.state_dir / "models",
            observer=observer,
        )
    if settings.generator.openai.enabled:
        generators["openai"] = RemoteBackend(settings.generator.openai.to_config())

    return AnswerService(
        settings.answers.to_config(),
        engine.embed_texts,
        generators,
        lambda: engine.encoder_info.identity(),
        reader=reader,
    )


def complete_openapi(app: Litestar) -> None:
    """Say in the OpenAPI document what the service does and Litestar's generated schema leaves out.

    Bodies that refuse unknown fields are closed (``additionalProperties: false``): an open schema lets a client
    generated from it send fields that get a 400. Unions of integers and numbers accept integers. The compliance
    report comes as HTML, JSON or PDF, one media type per ``format``. ``POST /v1/answers`` with ``"stream": true``
    answers with ``text/event-stream``, not JSON.
    """
    openapi = app.openapi_schema
    components = openapi.components.schemas or {}
    for name, value in vars(schemas).items():
        if (
            isinstance(value, type)
            and issubclass(value, msgspec.Struct)
            and value.__struct_config__.forbid_unknown_fields
            and name in components
        ):
            components[name].additional_properties = False
    for component in components.values():
        _exclusive_number_unions(component)
    report = _success_response(openapi, "/v1/reports/compliance", "get")
    if report is not None:
        report.content = {
            media_type: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description=f"format={fmt}"))
            for fmt, media_type in REPORT_MEDIA_TYPES.items()
        }
    answers = _success_response(openapi, "/v1/answers", "post")
    if answers is not None and answers.content is not None:
        # One event of the stream (OpenAPI describes an event stream by the schema of its events).
        answers.content["text/event-stream"] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["event", "data"],
                properties={
                    "event": Schema(type=OpenAPIType.STRING, enum=["delta", "final", "error"]),
                    "data": Schema(
                        type=OpenAPIType.STRING,
                        description='JSON: {"text"} for "delta", the whole AnswerResponse for "final", the '
                        'ErrorResponse shape for "error"',
                    ),
                },
                description='With "stream": true: "delta" events carry sentences that passed the grounding check, '
                'one "final" event the whole answer; a failure ends the stream with an "error" event.',
            )
        )


def _exclusive_number_unions(schema: Schema | Reference) -> None:
    """Drop ``integer`` from a ``oneOf`` that also allows ``number``.

    Litestar writes ``str | int | float`` as ``oneOf``, and an integer matches both ``integer`` and ``number``, so
    the document would refuse every integer the service accepts.
    """
    if not isinstance(schema, Schema):
        return
    if schema.one_of:
        kinds = [member.type for member in schema.one_of if isinstance(member, Schema)]
        if OpenAPIType.INTEGER in kinds and OpenAPIType.NUMBER in kinds:
            schema.one_of = [m for m in schema.one_of if not (isinstance(m, Schema) and m.type == OpenAPIType.INTEGER)]
    nested = [*(schema.one_of or []), *(schema.any_of or []), *(schema.all_of or [])]
    nested += [*(schema.properties or {}).values()]
    if isinstance(schema.additional_properties, Schema | Reference):
        nested.append(schema.additional_properties)
    if isinstance(schema.items, Schema | Reference):
        nested.append(schema.items)
    for child in nested:
        _exclusive_number_unions(child)


def _success_response(openapi: OpenAPI, path: str, method: str) -> OpenAPIResponse | None:
    item = (openapi.paths or {}).get(path)
    operation = getattr(item, method, None) if item is not None else None
    response = (operation.responses or {}).get("200") if operation is not None else None
    return response if isinstance(response, OpenAPIResponse) else None


def create_app(
    settings: Settings,
    *,
    show_progress: bool = True,
    encoder: Encoder | None = None,
    on_ready: Callable[[], None] | None = None,
    start_before_serving: bool = False,
) -> Litestar:
    """Build the service.

    Args:
        settings: The effective settings.
        show_progress: Draw a progress bar when the first start embeds the catalog.
        encoder: An already loaded encoder to serve with (tests); by default the configured one is loaded.
        on_ready: Called on the event loop once the engine (and a local generator loaded at startup) is ready.
        start_before_serving: Load the engine before accepting connections (a worker of several on one socket: the
            kernel then hands connections only to workers that are ready, also to one restarted after a crash).

    Returns:
        The Litestar app; serve it with any ASGI server.
    """
    metrics = Metrics()
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    serving, engine_config = models.pinned_engine_config(settings, show_progress=show_progress, encoder=encoder)
    engine = RetrievalEngine(engine_config, observer=metrics, encoder=encoder or inference_client())
    reader = models.reader_backend(settings, serving.reader_config, serving.reader, metrics)
    answers = build_answer_service(settings, engine, metrics, reader)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        keys = KeyStore(state_dir / "candor.sqlite")
        fleet = Follower(FleetSignals(state_dir / "fleet.sqlite"), settings.server.sync_interval_ms / 1000)
        audit = AuditLog(settings.audit_config()) if settings.audit.enabled else None
        if audit is not None:
            await audit.start()  # a store that cannot be opened is logged; audited routes then answer 503
        app.state.services = Services(
            settings=settings,
            engine=engine,
            keys=keys,
            metrics=metrics,
            audit=audit,
            answers=answers,
            config_digest=settings.digest(),
            models=serving,
            explanations=BoundedWork(
                "explanations",
                settings.audit.ig_workers,
                settings.audit.ig_max_pending,
                nice=settings.audit.background_nice,
                torch_threads=settings.audit.ig_threads,
                processes=settings.audit.ig_processes,
            ),
            reports=BoundedWork(
                "reports",
                settings.audit.report_workers,
                settings.audit.report_max_pending,
                nice=settings.audit.background_nice,
                processes=settings.audit.report_processes,
            ),
            fleet=fleet,
            # Shared by every worker process: a browser's next request may reach another one.
            sessions=SessionStore(state_dir / "sessions.sqlite"),
        )
        app.state.background_tasks = set()
        if settings.auth.bootstrap_keys:
            created = bootstrap_keys(keys, state_dir)
            if created is not None:
                print(f"candor: created a frontend and an admin API key in {created}", file=sys.stderr, flush=True)
                logger.info("api_keys_bootstrapped", path=str(created))

        async def start() -> None:
            # The reader loads first, so a ready service answers with it; one that cannot load is logged, search
            # still starts, and answers get 503 backend_unavailable until it loads.
            if answers.reader is not None:
                with suppress(BackendUnavailableError):
                    await answers.reader.start()
            await engine.start()
            local = answers.generators.get("local")
            if local is not None and settings.generator.local.load == "startup":
                await local.start()
            # Changes made through other processes on this state folder (workers, replicas) from now on.
            fleet.start(engine.catch_up, lambda: apply_pins(settings, engine, answers, app.state.services.models))
            if on_ready is not None:
                on_ready()

        startup = asyncio.create_task(start())
        # The task's failure is recorded on the engine (status "failed") and logged there.
        startup.add_done_callback(lambda t: t.cancelled() or t.exception())
        if start_before_serving:
            await startup  # a failure stops this process before it serves (uvicorn's supervisor then stops)
        try:
            yield
        finally:
            if not startup.done():
                startup.cancel()
            await asyncio.gather(startup, return_exceptions=True)
            await fleet.stop()
            for task in list(app.state.background_tasks):
                task.cancel()
            await answers.stop()
            app.state.services.explanations.close()
            app.state.services.reports.close()
            app.state.services.sessions.close()
            if engine.status == "ready":
                await engine.stop()
            if audit is not None:
                await audit.stop()
            keys.close()
            fleet.signals.close()

    api = Router(
        path="/v1",
        route_handlers=[
            RecommendationController,
            ItemController,
            AnswerController,
            DocumentController,
            AuditController,
            feedback,
            ops.info,
            compliance_report,
            drift_report,
            reload_models,
        ],
        # One dependency: Litestar resolves several in a task group, which costs more than the lookups.
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        before_request=check_api_request,
        security=[{"apiKey": []}],
    )
    # The reviewer console and the demo page: server-rendered pages over the same code as the API routes.
    web = Router(
        path="/",
        route_handlers=[ConsoleController, DemoController],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        include_in_schema=False,
    )
    static = create_static_files_router(path="/static", directories=[pages.STATIC], include_in_schema=False)
    app = Litestar(
        route_handlers=[api, web, static, ops.live, ops.ready, ops.metrics],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=reject_unknown_query,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Candor",
            version=ops.SERVICE_VERSION,
            description="Recommendations, semantic search and grounded answers over a shop's catalog.",
            path="/schema",
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="Candor API key")}
            ),
        ),
        debug=False,
        logging_config=None,  # logging is configured once, by configure_logging
    )
    complete_openapi(app)
    # Wrap the whole ASGI handler (not per route) so 404s and errors also get request ids and metrics.
    # Security headers go on every response, pages, reports and errors alike (app/web/headers.py).
    app.asgi_handler = SecurityHeadersMiddleware(app.asgi_handler)
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler, metrics, access_log=settings.logging.access_log)
    return app
