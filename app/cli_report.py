"""``candor report``: the compliance report and the model card, without a running server."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from app.cli_common import CONFIG_OPTION, load_settings_or_fail, open_audit_log


def _when(_: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    from app.compliance import parse_when

    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


def _facts(config_file: Path | None, since: datetime | None = None, until: datetime | None = None) -> Any:
    from app.compliance import check_period, facts_offline
    from app.observability import configure_logging
    from retrieval.errors import RetrievalError

    try:
        check_period(since, until)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from exc
    settings = load_settings_or_fail(config_file)
    configure_logging("warning", "console")
    audit = _open_audit(settings)
    try:
        return facts_offline(settings, audit=audit, since=since, until=until)
    except (FileNotFoundError, RetrievalError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        close = getattr(audit, "close", None)
        if close is not None:
            close()


class _UnreadableAudit:
    """Stands in for an audit log that cannot be opened, so the report states why instead of omitting it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def verify(self) -> Any:
        raise RuntimeError(self.reason)

    def summary(self, since: datetime | None, until: datetime | None) -> Any:
        raise RuntimeError(self.reason)

    def latest_drift(self) -> Any:
        raise RuntimeError(self.reason)

    def latest_bias(self) -> Any:
        raise RuntimeError(self.reason)


def _open_audit(settings: Any) -> Any:
    """The configured audit log opened read-side, ``None`` when auditing is off, or a stand-in saying why not."""
    from governance.audit import AuditUnavailableError

    if not settings.audit.enabled:
        return None
    try:
        return open_audit_log(settings)
    except AuditUnavailableError as exc:
        return _UnreadableAudit(f"the audit log cannot be opened: {exc}")


def _write(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    click.echo(f"written to {out} ({len(data)} bytes)", err=True)


@click.group("report")
def report_group() -> None:
    """Compliance reports and model cards generated from what is serving, the audit log and the evaluations."""


@report_group.command("compliance")
@click.option("--format", "fmt", type=click.Choice(["html", "json", "pdf"]), default="html", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to write.")
@click.option("--since", callback=_when, default=None, help="Period start (YYYY-MM-DD or ISO time, UTC).")
@click.option("--until", callback=_when, default=None, help="Period end, exclusive (YYYY-MM-DD or ISO time, UTC).")
@CONFIG_OPTION
def report_compliance(
    fmt: str, out: Path, since: datetime | None, until: datetime | None, config_file: Path | None
) -> None:
    """Write the compliance report (EU AI Act articles 9-15 and 50, DSA article 27) as HTML, JSON or PDF.

    Works without a running server: it loads the configured encoder for its identity and reads the published
    index snapshot, the domain pack and the latest run under var/evals/runs.
    """
    from governance.report import render

    facts = _facts(config_file, since, until)
    try:
        data = render(facts, fmt)  # type: ignore[arg-type]
    except OSError as exc:  # WeasyPrint without its Pango libraries
        raise click.ClickException(f"cannot render {fmt}: {exc}") from exc
    _write(out, data)


@report_group.command("model-card")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to write.")
@CONFIG_OPTION
def report_model_card(fmt: str, out: Path, config_file: Path | None) -> None:
    """Write the serving encoder's model card (Markdown or JSON)."""
    import json

    from app.compliance import model_card
    from governance.model_card import model_card_to_json, render_model_card_markdown

    card = model_card(_facts(config_file))
    if fmt == "json":
        data = json.dumps(model_card_to_json(card), indent=2, allow_nan=False) + "\n"
    else:
        data = render_model_card_markdown(card)
    _write(out, data.encode("utf-8"))
