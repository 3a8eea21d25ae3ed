"""The ``candor`` command line: serve, build the index, manage API keys and domain packs, train and promote models."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from app.cli_audit import audit_group
from app.cli_common import ADDRESS_OPTION, CONFIG_OPTION, ENGINE_OPTION, load_settings_or_fail, ray_config_or_fail
from app.cli_eval import eval_group
from app.cli_models import models_group
from app.cli_report import report_group
from app.cli_train import train_group

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@click.group()
def main() -> None:
    """Candor: recommendations and grounded answers over REST."""


main.add_command(eval_group)
main.add_command(audit_group)
main.add_command(report_group)
main.add_command(train_group)
main.add_command(models_group)


@main.command()
@click.option("--host", default=None, help="Interface to bind (default from config).")
@click.option("--port", type=int, default=None, help="Port (default from config).")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="HTTP processes on the one port (default: server.workers; 0: one per core beside a GPU, 1 on CPUs).",
)
@CONFIG_OPTION
def serve(host: str | None, port: int | None, workers: int | None, config_file: Path | None) -> None:
    """Run the HTTP service."""
    import uvicorn

    from app.observability import configure_logging
    from app.workers import INFERENCE_ENV, WORKER_ENV, resolve_workers

    server: dict[str, Any] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if workers is not None:
        server["workers"] = workers
    settings = load_settings_or_fail(config_file, {"server": server} if server else None)
    configure_logging(settings.logging.level, settings.logging.format)
    count = resolve_workers(settings)
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        # An idle kept-alive connection is closed after keep_alive_timeout_s; the protocol class adds a deadline
        # for reading each whole request (request_read_timeout_s: 408 or close).
        "timeout_keep_alive": settings.server.keep_alive_timeout_s,
    }
    if count > 1:
        _serve_workers(settings, count, config_file, server, options)
        return

    from app.app import create_app
    from app.runtime import tune_gc, tune_interpreter
    from app.server import protocol_class

    os.environ.pop(WORKER_ENV, None)
    os.environ.pop(INFERENCE_ENV, None)
    tune_interpreter(settings.server)
    app = create_app(settings, on_ready=lambda: tune_gc(settings.server))
    uvicorn.run(app, http=protocol_class(settings.server.request_read_timeout_s), **options)


def _serve_workers(
    settings: Any, count: int, config_file: Path | None, server: dict[str, Any], options: dict[str, Any]
) -> None:
    """Run ``count`` worker processes under uvicorn's supervisor (see :mod:`app.workers`)."""
    import uvicorn

    from app.app import bootstrap_keys
    from app.auth import KeyStore
    from app.workers import WORKER_ENV, shared_inference

    # Workers are spawned and read their settings again: hand them what this command line chose.
    if config_file is not None:
        os.environ["CANDOR_CONFIG"] = str(config_file.resolve())
    for key, value in {**server, "workers": count}.items():
        os.environ[f"CANDOR_SERVER__{key.upper()}"] = str(value)
    os.environ[WORKER_ENV] = str(count)
    # First-run keys are made here, once, not by N workers racing to create them.
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if settings.auth.bootstrap_keys:
        keys = KeyStore(settings.state_dir / "candor.sqlite")
        try:
            created = bootstrap_keys(keys, settings.state_dir)
        finally:
            keys.close()
        if created is not None:
            print(f"candor: created a frontend and an admin API key in {created}", file=sys.stderr, flush=True)
    with ExitStack() as stack:
        if settings.server.inference == "shared":  # started after the environment above, which it reads too
            stack.enter_context(shared_inference(settings))
        uvicorn.run(
            "app.workers:worker_app",
            factory=True,
            workers=count,
            http="app.workers:HttpProtocol",
            # A worker loads its models before it serves; its health pings are answered meanwhile by a thread,
            # which may wait for the interpreter while weights load.
            timeout_worker_healthcheck=30,
            **options,
        )


@main.group()
def index() -> None:
    """Build the catalog index."""


@index.command("build")
@ENGINE_OPTION
@ADDRESS_OPTION
@CONFIG_OPTION
def index_build(engine: str, address: str | None, config_file: Path | None) -> None:
    """Make the catalog match the domain pack and write a fresh index snapshot.

    Only items whose text changed since the last build are embedded again; with --engine ray, Ray Data actors
    embed them (docs/ray.md). Run it while the service is stopped (a running service rebuilds with
    POST /v1/index/rebuild).
    """
    from contextlib import nullcontext

    from app.observability import configure_logging
    from retrieval.engine import RetrievalEngine
    from retrieval.errors import RetrievalError

    settings = load_settings_or_fail(config_file)
    ray_cfg = ray_config_or_fail(settings, engine, address)
    configure_logging(settings.logging.level, "console")
    retrieval_engine = RetrievalEngine(settings.engine_config(show_progress=True))
    try:
        if ray_cfg is None:
            session: Any = nullcontext()
            embedder = None
        else:
            from retrieval.bulk import RayItemEmbedder, ray_session
            from retrieval.pack import items_file

            session = ray_session(ray_cfg.address)
            embedder = RayItemEmbedder(ray_cfg, settings.encoder_config(), items_file(settings.pack_path))
        with session:
            info = retrieval_engine.build_offline(embedder)
    except RetrievalError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"index ready: {info['size']} items, kind {info['kind']}, snapshot {info['version']}", err=True)
    kb = info["knowledge"]
    click.echo(f"knowledge base ready: {kb['documents']} documents in {kb['chunks']} chunks", err=True)


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice(["frontend", "admin", "reviewer"]), required=True)
@click.option("--label", default="", help="Free-text note stored with the key.")
@CONFIG_OPTION
def keys_create(role: str, label: str, config_file: Path | None) -> None:
    """Create a key and print it (and nothing else) on stdout. It works at once, also in a running service."""
    from app.auth import KeyStore

    settings = load_settings_or_fail(config_file)
    store = KeyStore(settings.state_dir / "candor.sqlite")
    try:
        click.echo(store.create(role, label=label))  # type: ignore[arg-type]
    finally:
        store.close()


@keys.command("list")
@CONFIG_OPTION
def keys_list(config_file: Path | None) -> None:
    """List active keys (ids and roles, never the keys themselves)."""
    from app.auth import KeyStore

    settings = load_settings_or_fail(config_file)
    store = KeyStore(settings.state_dir / "candor.sqlite")
    try:
        for row in store.list():
            click.echo(f"{row['key_id']}\t{row['role']}\t{row['label']}")
    finally:
        store.close()


@keys.command("revoke")
@click.argument("key_id")
@CONFIG_OPTION
def keys_revoke(key_id: str, config_file: Path | None) -> None:
    """Revoke a key by its id (the part after ``cnd_``)."""
    from app.auth import KeyStore

    settings = load_settings_or_fail(config_file)
    store = KeyStore(settings.state_dir / "candor.sqlite")
    try:
        if not store.revoke(key_id):
            raise click.ClickException(f"no active key with id {key_id}")
    finally:
        store.close()
    click.echo(f"revoked {key_id}", err=True)


@main.group()
def pack() -> None:
    """Domain packs."""


@pack.command("validate")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def pack_validate(path: Path) -> None:
    """Check every line of a domain pack; print problems as file:line: field: problem."""
    from retrieval.errors import PackValidationError
    from retrieval.pack import load_pack

    try:
        loaded = load_pack(path)
    except PackValidationError as exc:
        for problem in exc.problems:
            click.echo(problem)
        click.echo(f"{len(exc.problems)} problem(s) found in {path}", err=True)
        sys.exit(1)
    counts = ", ".join(f"{n} {name}" for name, n in loaded.summary().items())
    click.echo(f"ok: {counts}")


@pack.command("import-flipkart")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--users", type=int, default=200, show_default=True, help="Synthetic shoppers to generate.")
@click.option("--seed", type=int, default=7, show_default=True)
def pack_import_flipkart(csv_path: Path, out_dir: Path, users: int, seed: int) -> None:
    """Convert the Flipkart sample CSV into a domain pack (items plus synthetic shoppers)."""
    from retrieval.flipkart import build_demo_pack

    counts = build_demo_pack(csv_path, out_dir, n_users=users, seed=seed)
    click.echo(", ".join(f"{n} {name}" for name, n in counts.items()) + f" written to {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    main()
