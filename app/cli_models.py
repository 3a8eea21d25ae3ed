"""``candor models``: the model registry: list and show versions, promote one through its gates, roll back."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import click

from app.cli_common import CONFIG_OPTION, load_settings_or_fail, open_audit_log
from retrieval.registry import ModelKind

KINDS = ("recommender", "encoder", "reader")
GATE_FAILED_EXIT = 3


def _registry(settings: Any) -> Any:
    from app.models import open_registry

    return open_registry(settings, create=True)


def _record(settings: Any) -> Any:
    """Chains a model change into the audit log (refused when the log cannot record it)."""
    if not settings.audit.enabled:
        raise click.ClickException(
            "the audit log is disabled ([audit] enabled = false): model changes must be recorded"
        )
    from governance.audit import AuditUnavailableError

    try:
        log = open_audit_log(settings)
    except AuditUnavailableError as exc:
        raise click.ClickException(f"the audit log cannot record the change: {exc}") from exc

    def record(change: dict[str, Any], caller: dict[str, str]) -> str:
        try:
            return str(log.record_model_change(change, caller))
        finally:
            log.close()

    return record


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


@click.group("models")
def models_group() -> None:
    """The model registry (MLflow; [models] registry_uri, by default under the state folder)."""


@models_group.command("list")
@click.argument("kind", type=click.Choice(KINDS), required=False)
@CONFIG_OPTION
def models_list(kind: str | None, config_file: Path | None) -> None:
    """Every registered version, newest first, with its aliases and headline figures."""
    registry = _registry(load_settings_or_fail(config_file))
    for name in [kind] if kind else KINDS:
        versions = registry.versions(name)
        for v in versions:
            aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            figures = ", ".join(
                f"{k} {val:.4f}" for k, val in sorted(v.metrics.items()) if k.endswith(("ndcg_at_10", "hr_at_10"))
            )
            click.echo(f"{v.ref:16s}{aliases:14s} {_when(v.created_at)}  {v.params.get('kind', '')}  {figures}")
        if not versions and kind:
            click.echo(f"no {name} is registered")


@models_group.command("show")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("version")
@CONFIG_OPTION
def models_show(kind: str, version: str, config_file: Path | None) -> None:
    """One version (a number, ``production`` or ``latest``) with its model card, as JSON."""
    from retrieval.registry import RegistryError

    registry = _registry(load_settings_or_fail(config_file))
    try:
        found = registry.get(kind, version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    data = {**found.to_dict(), "path": str(registry.local_path(found)), "card": registry.card(found)}
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@models_group.command("promote")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even when a gate fails (recorded, and queued for review).")
@click.option("--by", default=None, help="Who promotes (default: the login name).")
@click.option("--reason", default="", help="Why (recorded with the change).")
@click.option("--gate", "extra_gates", multiple=True, help="Another gate rule the candidate must pass (repeatable).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@CONFIG_OPTION
def models_promote(
    kind: str,
    version: str,
    force: bool,
    by: str | None,
    reason: str,
    extra_gates: tuple[str, ...],
    progress: bool,
    config_file: Path | None,
) -> None:
    """Evaluate VERSION beside production and make it production if it is better (the gates pass).

    Recommenders are evaluated on each shopper's latest interaction of the served pack, encoders on its judged
    queries. Exits 3 when a gate fails (nothing changes unless --force). The service serves the new version after
    POST /v1/admin/reload or a restart.
    """
    from app.cli_train import serving_encoder
    from app.promotion import promote
    from evals.errors import EvalError
    from retrieval.registry import RegistryError

    settings = load_settings_or_fail(config_file)
    registry = _registry(settings)
    try:
        candidate = registry.get(kind, version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    record = _record(settings)
    who = by or getpass.getuser()
    try:
        outcome = promote(
            settings,
            registry,
            candidate,
            by=who,
            force=force,
            reason=reason or ("forced" if force else "gates passed"),
            record=record,
            encoder=serving_encoder(settings) if kind == "recommender" else None,
            extra_gates=extra_gates,
            progress=progress,
        )
    except (ValueError, EvalError) as exc:
        raise click.ClickException(str(exc)) from exc
    for gate in outcome.gates:
        click.echo(f"gate {gate.status.upper() if gate.status == 'failed' else gate.status}: {gate.reason}", err=True)
    if outcome.promoted:
        how = "FORCED past failed gates, queued for review" if outcome.forced else "gates passed"
        click.echo(f"{candidate.ref} is production ({how}); audit record {outcome.audit_id}")
        click.echo("serve it: POST /v1/admin/reload (admin key), or restart the service")
        return
    click.echo(f"{candidate.ref} was not promoted: a gate failed (--force promotes anyway, and records it)", err=True)
    sys.exit(GATE_FAILED_EXIT)


@models_group.command("rollback")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--by", default=None, help="Who rolls back (default: the login name).")
@CONFIG_OPTION
def models_rollback(kind: str, by: str | None, config_file: Path | None) -> None:
    """Make the version that served before the current one production again (recorded in the audit log)."""
    from app.promotion import rollback
    from retrieval.registry import RegistryError

    settings = load_settings_or_fail(config_file)
    registry = _registry(settings)
    try:
        after, before, audit_id = rollback(
            registry, cast(ModelKind, kind), by=by or getpass.getuser(), record=_record(settings)
        )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{after.ref} is production again (was {before.ref if before else 'nothing'}); audit record {audit_id}")
    click.echo("serve it: POST /v1/admin/reload (admin key), or restart the service")
