"""``candor audit``: verify, export, purge and erase; check recent traffic for drift; audit recommenders for bias."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from app.cli_common import CONFIG_OPTION, load_settings_or_fail, open_audit_log

VERIFY_FAILED_EXIT = 2


def _open(config_file: Path | None) -> Any:
    from governance.audit import AuditUnavailableError

    try:
        return open_audit_log(load_settings_or_fail(config_file))
    except AuditUnavailableError as exc:
        raise click.ClickException(f"audit log unavailable: {exc}") from exc


def _report_json(report: Any) -> str:
    out = dataclasses.asdict(report)
    out["checked_at"] = report.checked_at.isoformat() if report.checked_at else None
    return json.dumps(out, indent=2)


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log."""


@audit_group.command("verify")
@click.option(
    "--file",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verify an export file offline instead of the live log.",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM public key to trust for --file (default: the key inside the file).",
)
@CONFIG_OPTION
def verify(export_file: Path | None, public_key: Path | None, config_file: Path | None) -> None:
    """Check every record's hash and link and every signed checkpoint; print the report as JSON.

    Exits 0 when the log is intact, 2 when a record fails (the report names the first one and why).
    """
    from governance.audit import AuditUnavailableError, ExportFormatError, verify_export

    if export_file is not None:
        pem = public_key.read_text(encoding="utf-8") if public_key else None
        try:
            report = verify_export(export_file, pem)
        except ExportFormatError as exc:
            raise click.ClickException(str(exc)) from exc
    else:
        if public_key is not None:
            raise click.UsageError("--public-key applies to --file only")
        log = _open(config_file)
        try:
            report = log.verify()
        except AuditUnavailableError as exc:
            raise click.ClickException(f"audit log unavailable: {exc}") from exc
        finally:
            log.close()
    click.echo(_report_json(report))
    if report.ok:
        click.echo(f"ok: {report.count} records, {report.checkpoints} signed checkpoints", err=True)
    else:
        click.echo(f"FAILED at {report.first_bad_id}: {report.reason}", err=True)
        sys.exit(VERIFY_FAILED_EXIT)


@audit_group.command("export")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@CONFIG_OPTION
def export(out: Path, config_file: Path | None) -> None:
    """Write records, signed checkpoints and the public key as JSON lines (no personal data)."""
    log = _open(config_file)
    try:
        counts = log.export(out)
    finally:
        log.close()
    click.echo(f"exported {counts['records']} records and {counts['checkpoints']} checkpoints to {out}", err=True)


def _parse_date(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter("use an ISO 8601 date, e.g. 2026-01-31") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit_group.command("purge")
@click.option("--before", "before", required=True, help="Cut-off date (ISO 8601, UTC); must be past the retention.")
@CONFIG_OPTION
def purge(before: str, config_file: Path | None) -> None:
    """Drop the content of records older than --before, leaving a chained purge record (the chain stays valid)."""
    cutoff = _parse_date(before)
    log = _open(config_file)
    try:
        result = log.purge(cutoff)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        log.close()
    click.echo(json.dumps(result))


@audit_group.command("erase")
@click.option("--record", "record_id", required=True, help="Audit record id whose personal data to erase.")
@CONFIG_OPTION
def erase(record_id: str, config_file: Path | None) -> None:
    """Erase the personal data kept apart for one record; a chained erase record notes it."""
    from governance.audit import AuditNotFoundError

    log = _open(config_file)
    try:
        erase_id = log.erase(record_id)
    except AuditNotFoundError as exc:
        raise click.ClickException(f"no audit record with id {record_id}") from exc
    finally:
        log.close()
    click.echo(json.dumps({"erased": record_id, "erase_record": erase_id}))


@audit_group.command("drift")
@click.option("--window", default=None, help="The current window, e.g. 24h, 30m, 7d (default: [drift] window).")
@click.option("--reference", default=None, help="The reference window before it (default: [drift] reference).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the report (default: <state_dir>/reports/drift.json).",
)
@CONFIG_OPTION
def drift(window: str | None, reference: str | None, out: Path | None, config_file: Path | None) -> None:
    """Compare recent audited traffic with a reference window: query embeddings, top scores, abstention, feedback.

    Prints the report as JSON, writes it to --out, and chains it in the audit log; a report with alerts joins the
    review queue. Exits 0 whether or not drift was found (read ``drift`` and ``alerts``).
    """
    import getpass

    from governance.audit import AuditUnavailableError
    from governance.drift import check_drift, parse_duration

    settings = load_settings_or_fail(config_file)
    cfg = settings.drift
    try:
        span = parse_duration(window or cfg.window)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--window") from exc
    try:
        before = parse_duration(reference or cfg.reference)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reference") from exc
    if not settings.audit.enabled:
        raise click.ClickException("the audit log is disabled ([audit] enabled = false): nothing to check")
    log = _open(config_file)
    caller = {"user": getpass.getuser(), "via": "candor audit drift"}
    try:
        report = check_drift(log, cfg.to_config(), window=span, reference=before, caller=caller)
    except AuditUnavailableError as exc:
        raise click.ClickException(f"audit log unavailable: {exc}") from exc
    finally:
        log.close()
    text = json.dumps(report, indent=2, allow_nan=False)
    target = out or settings.state_dir / "reports" / "drift.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n", encoding="utf-8")
    click.echo(text)
    alerts = report["alerts"]
    summary = f"{len(alerts)} drift alert(s), queued for review" if alerts else "no drift alert"
    click.echo(f"{summary}; audit record {report['audit_id']}; written to {target}", err=True)


@audit_group.command("bias")
@click.argument("suite")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CANDOR_DATA_ROOT",
    default=None,
    help="Folder holding the datasets the suite names (default: $CANDOR_DATA_ROOT).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder (default: <state_dir>/evals/bias/<run id>).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite field (repeatable).")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@CONFIG_OPTION
def bias(
    suite: str,
    data_root: Path | None,
    out_dir: Path | None,
    overrides: tuple[str, ...],
    progress: bool,
    config_file: Path | None,
) -> None:
    """Audit SUITE (an eval suite) for bias: recommenders' group quality and exposure, answers on BBQ.

    Per-group quality, provider exposure and popularity bias of the suite's recommenders, and with [bias.bbq] the
    answer backend's accuracy and bias score on BBQ. Writes bias.json and bias.html to the run folder and chains
    the audit's summary in the audit log; figures past the suite's [bias] thresholds become findings, and an audit
    with findings joins the review queue. Prints the summary as JSON. Exits 0 whether or not there are findings
    (read ``findings``).
    """
    import getpass

    from app.cli_eval import registered_models, service_answer_backends
    from app.observability import configure_logging
    from evals.answers import available_backends
    from evals.bias import BiasOptions, bias_summary, finding_text, run_bias_audit
    from evals.errors import EvalError
    from evals.suite import load_suite
    from governance.audit import AuditUnavailableError

    settings = load_settings_or_fail(config_file)
    configure_logging("warning", "console")
    try:
        loaded = load_suite(suite, overrides)
        for applied in loaded.overrides:
            click.echo(f"set {applied}", err=True)
        run = run_bias_audit(
            loaded,
            BiasOptions(
                data_root=data_root,
                state_dir=Path(settings.state_dir) / "evals",
                out_dir=out_dir,
                progress=progress,
                models=registered_models(settings),
                answer_backends=available_backends(service_answer_backends(settings)),
            ),
        )
    except EvalError as exc:
        raise click.ClickException(str(exc)) from exc
    summary = bias_summary(run.report)
    summary["report"] = str(run.run_dir / "bias.json")
    audit_id = None
    if settings.audit.enabled:
        log = _open(config_file)
        try:
            audit_id = log.record_bias(summary, {"user": getpass.getuser(), "via": "candor audit bias"})
        except AuditUnavailableError as exc:
            raise click.ClickException(f"audit log unavailable: {exc} (the report is in {run.run_dir})") from exc
        finally:
            log.close()
    click.echo(json.dumps({**summary, "audit_id": audit_id}, indent=2, allow_nan=False))
    for note in run.report.get("notes", []):
        click.echo(f"note: {note}", err=True)
    for finding in run.report["findings"]:
        click.echo(f"finding {finding_text(finding)}", err=True)
    queued = ", queued for review" if run.report["findings"] and audit_id else ""
    chained = f"audit record {audit_id}" if audit_id else "not chained: the audit log is disabled ([audit] enabled)"
    click.echo(f"{len(run.report['findings'])} finding(s){queued}; {chained}; written to {run.run_dir}", err=True)
