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
