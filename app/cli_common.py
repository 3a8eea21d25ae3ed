"""What every ``candor`` command group shares: the ``--config`` option, settings, and opening the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file whose values override the defaults (default: $CANDOR_CONFIG); environment variables override both.",
)

ENGINE_OPTION = click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the bulk work runs: this process, or Ray actors and tasks (docs/ray.md).",
)
ADDRESS_OPTION = click.option(
    "--address",
    default=None,
    help="Ray cluster to join with --engine ray (auto, ray://head:10001, head:6379); default [ray] address.",
)


def ray_config_or_fail(settings: Any, engine: str, address: str | None) -> Any:
    """The ``[ray]`` config for ``--engine ray`` (``None`` for the local engine).

    Raises:
        click.UsageError: Ray is not installed (exit status 2), or ``--address`` came without ``--engine ray``.
    """
    if engine != "ray":
        if address is not None:
            raise click.UsageError("--address needs --engine ray")
        return None
    from retrieval.bulk import INSTALL_HINT, ray_available

    if not ray_available():
        raise click.UsageError(f"--engine ray needs Ray Data, which is not installed ({INSTALL_HINT})")
    return settings.ray.to_config(address)


def load_settings_or_fail(config_file: Path | None, overrides: dict[str, Any] | None = None) -> Any:
    """The effective settings; a missing or invalid config file ends the command with its message."""
    from pydantic import ValidationError

    from app.settings import load_settings

    try:
        return load_settings(config_file, overrides)
    except (FileNotFoundError, ValidationError) as exc:
        raise click.ClickException(str(exc)) from exc


def open_audit_log(settings: Any) -> Any:
    """The configured audit log, opened for synchronous use (close it when done).

    Raises:
        governance.audit.AuditUnavailableError: The store cannot be opened.
    """
    from governance.audit import AuditLog

    log = AuditLog(settings.audit_config())
    log.open()
    return log
