"""Gated promotion: a registered version serves only when the evaluation suite says it is better.

``candor models promote KIND VERSION`` evaluates the candidate and the version in production on the same held-out
data (a recommender on each shopper's latest interaction of the served pack; an encoder on the pack's judged
queries), then checks the gates. A candidate that is not better than production (or, with nothing in production,
than the simplest baseline) is refused with the gates' reasons; ``--force`` promotes anyway. Every promotion,
forced or not, and every rollback is chained into the audit log with who did it; a forced one joins the review
queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.training import HELD_OUT_TASK, held_out_suite, load_source, run_options
from evals.errors import EvalError
from evals.gates import GateResult
from evals.runner import RunSummary, run_suite
from evals.suite import EncoderSpec, LoadedSuite, RetrievalTask, Suite, SuiteMeta, SystemSpec
from retrieval.encoder import Encoder
from retrieval.registry import ModelKind, ModelRegistry, ModelVersion

RETRIEVAL_TASK = "pack"
READER_TASK = "heldout"


@dataclass(slots=True)
class Promotion:
    """What a promotion decided and why.

    Attributes:
        kind: The kind of model.
        candidate: The version asked for.
        production: The version in production before (``None``: none).
        gates: Each gate's outcome.
        runs: The evaluation runs (``candidate``, ``production``) by folder.
        promoted: Whether ``production`` now points at the candidate.
        forced: Whether it was promoted past failed gates.
        audit_id: The chained record of the change (``None`` when nothing changed).
    """

    kind: ModelKind
    candidate: ModelVersion
    production: ModelVersion | None
    gates: list[GateResult] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)
    promoted: bool = False
    forced: bool = False
    audit_id: str | None = None

    @property
    def gates_passed(self) -> bool:
        """Whether every gate passed."""
        return all(g.passed for g in self.gates)

    def change(self, reason: str) -> dict[str, Any]:
        """The audit record's content."""
        return {
            "action": "promote",
            "model": self.kind,
            "version": self.candidate.ref,
            "previous": self.production.ref if self.production else None,
            "forced": self.forced,
            "reason": reason,
            "gates": [g.to_json() for g in self.gates],
            "runs": dict(self.runs),
        }


def _encoder_suite(
    settings: Settings, folder: Path | None, name: str, gates: Sequence[str], seed: int, fold: tuple[int, int, int]
) -> LoadedSuite:
    """The served pack's judged queries, searched with the encoder in ``folder`` (``None``: the ``[encoder]`` model).

    With ``fold`` = ``(folds, fold, seed)`` and ``folds`` set, only that fold of the queries is scored.
    """
    encoder = settings.encoder
    spec = EncoderSpec(**{**encoder.model_dump(), "path": str(folder) if folder else encoder.path, "name": name})
    folds, held, fold_seed = fold
    task = RetrievalTask(dataset=str(settings.pack_path), format="pack", folds=folds, fold=held, fold_seed=fold_seed)
    suite = Suite(
        suite=SuiteMeta(name="encoder-promotion", description="judged queries of the served pack", seed=seed),
        system=SystemSpec(encoder=spec, index=settings.index, recommender=settings.recommender),
        retrieval={RETRIEVAL_TASK: task},
        gates={"rules": list(gates)},
    )
    return LoadedSuite(suite, settings.pack_path / "<promotion suite>")


def held_out_fold(settings: Settings, candidate: ModelVersion) -> tuple[tuple[int, int, int], GateResult | None]:
    """Which of the served pack's judged queries an encoder may be compared on: those it did not train on.

    Returns:
        ``(folds, fold, seed)`` (``folds`` 0: every query), and a failed gate when the candidate trained on every
        judged query of the served pack (nothing is left to compare it on honestly).
    """
    if candidate.tags.get("trained_on") != f"pack:{settings.pack_path.resolve()}":
        return (0, 0, 0), None
    folds = int(candidate.params.get("folds", "0") or 0)
    if not folds:
        reason = f"{candidate.ref} trained on every judged query of the served pack: none is left to compare it on"
        return (0, 0, 0), GateResult("held-out queries exist", False, reason)
    fold, seed = int(candidate.params.get("fold", "0")), int(candidate.params.get("fold_seed", "0"))
    return (folds, fold, seed), None


def promotion_gates(kind: ModelKind, has_production: bool) -> list[str]:
    """The default gates: better than production, or than the simplest baseline when nothing is in production."""
    if kind == "recommender":
        task = f"recommendation.{HELD_OUT_TASK}"
        rules = [f"ndcg@10[task={task}, system=registered] > ndcg@10[task={task}, system=most-popular]"]
        if has_production:
            rules.append(f"ndcg@10[task={task}, system=registered] > baseline")
        return rules
    if kind == "reader":
        # A reader is compared with production, or with sentence answers, on the articles it never saw.
        return [f"f1[task=answers.{READER_TASK}, setting=gold] > baseline"]
    # An encoder is compared with production, or with the stock [encoder] model.
    return [f"ndcg@10[task=retrieval.{RETRIEVAL_TASK}] > baseline"]


def evaluate(
    settings: Settings,
    registry: ModelRegistry,
    candidate: ModelVersion,
    *,
    encoder: Encoder | None,
    extra_gates: Sequence[str] = (),
    seed: int = 13,
    progress: bool = True,
) -> Promotion:
    """Evaluate a candidate beside production and check the gates (nothing changes in the registry).

    Args:
        settings: The effective settings (the served pack, the state folder).
        registry: The registry both versions come from.
        candidate: The version to promote.
        encoder: The serving encoder (recommenders are evaluated with it; encoders bring their own).
        extra_gates: More rules the candidate's run must pass.
        seed: Seed of the evaluation's bootstrap.
        progress: Draw progress bars.
    """
    kind = candidate.kind
    production = registry.production(kind)
    promotion = Promotion(kind, candidate, production)
    if production is not None and production.version == candidate.version:
        promotion.gates = [
            GateResult(f"{candidate.ref} is not in production", False, f"{candidate.ref} is in production")
        ]
        return promotion
    gates = [*promotion_gates(kind, production is not None), *extra_gates]
    baseline: RunSummary | None = None
    unavailable: GateResult | None = None
    if kind == "recommender":
        source = load_source(None, None, settings)
        options = run_options(settings, encoder, registry, progress)
        if production is not None:
            try:
                baseline = run_suite(
                    held_out_suite(settings, source, ["registered"], str(production.version), seed=seed), options
                )
            except (EvalError, ValueError) as exc:  # it cannot be scored on today's catalog: say so, let --force decide
                reason = f"{production.ref} in production cannot be evaluated on the served pack: {exc}"
                unavailable = GateResult("production can be evaluated", False, reason)
        options.baseline = str(baseline.run_dir) if baseline else None
        suite = held_out_suite(
            settings, source, ["registered", "most-popular"], str(candidate.version), seed=seed, gates=gates
        )
        run = run_suite(suite, options)
    elif kind == "encoder":
        options = run_options(settings, None, registry, progress)
        current = registry.local_path(production) if production else None
        name = production.ref if production else settings.encoder.name
        fold, unavailable = held_out_fold(settings, candidate)
        baseline = run_suite(_encoder_suite(settings, current, name, (), seed, fold), options)
        options.baseline = str(baseline.run_dir)
        run = run_suite(
            _encoder_suite(settings, registry.local_path(candidate), candidate.ref, gates, seed, fold), options
        )
    elif kind == "reader":
        baseline, run = _evaluate_reader(settings, registry, candidate, production, gates, seed, progress)
    else:
        raise ValueError(f"promoting a {kind} is not supported yet")
    promotion.gates = [*run.gates, *([unavailable] if unavailable else [])]
    promotion.runs = {"candidate": str(run.run_dir), **({"production": str(baseline.run_dir)} if baseline else {})}
    return promotion


def _evaluate_reader(
    settings: Settings,
    registry: ModelRegistry,
    candidate: ModelVersion,
    production: ModelVersion | None,
    gates: Sequence[str],
    seed: int,
    progress: bool,
) -> tuple[RunSummary, RunSummary]:
    """The candidate reader and production's (or sentence answers) on the articles the candidate never saw."""
    from dataclasses import replace

    from app.cli_eval import service_answer_backends
    from app.training_reader import held_out_suite, load_reader_source
    from evals.answers import available_backends

    trained_on = candidate.tags.get("trained_on", "")
    kind, _, where = trained_on.partition(":")
    if kind not in ("squad", "pack") or not Path(where).exists():
        raise ValueError(f"{candidate.ref} was trained on {trained_on!r}, which is not here to evaluate it on")
    path = Path(where)
    source = load_reader_source(
        path if kind == "squad" else None, path if kind == "pack" else None, salt=candidate.params.get("split_salt", "")
    )
    backends = available_backends(service_answer_backends(settings))
    options = run_options(settings, None, registry, progress)
    options = replace(options, answer_backends=backends)
    current = str(registry.local_path(production)) if production else "none"
    baseline = run_suite(held_out_suite(source, current, seed=seed), options)
    options.baseline = str(baseline.run_dir)
    suite = held_out_suite(source, str(registry.local_path(candidate)), seed=seed, gates=gates)
    return baseline, run_suite(suite, options)


def promote(
    settings: Settings,
    registry: ModelRegistry,
    candidate: ModelVersion,
    *,
    by: str,
    force: bool,
    reason: str,
    record: Callable[[dict[str, Any], dict[str, str]], str],
    encoder: Encoder | None,
    extra_gates: Sequence[str] = (),
    progress: bool = True,
) -> Promotion:
    """Evaluate, and point ``production`` at the candidate when the gates pass (or when forced).

    Args:
        settings: The effective settings.
        registry: The registry.
        candidate: The version to promote.
        by: Who promotes (recorded).
        force: Promote even when a gate fails (recorded, and queued for review).
        reason: Why (recorded).
        record: Chains the change into the audit log; returns the record's id.
        encoder: The serving encoder (see :func:`evaluate`).
        extra_gates: More rules the candidate must pass.
        progress: Draw progress bars.
    """
    promotion = evaluate(settings, registry, candidate, encoder=encoder, extra_gates=extra_gates, progress=progress)
    if not promotion.gates_passed and not force:
        return promotion
    if promotion.production is not None and promotion.production.version == candidate.version:
        return promotion
    promotion.forced = not promotion.gates_passed
    promotion.audit_id = record(promotion.change(reason), {"user": by, "via": "candor models promote"})
    registry.promote(candidate, by=by, forced=promotion.forced, reason=reason)
    promotion.promoted = True
    return promotion


def rollback(
    registry: ModelRegistry, kind: ModelKind, *, by: str, record: Callable[[dict[str, Any], dict[str, str]], str]
) -> tuple[ModelVersion, ModelVersion | None, str]:
    """Point ``production`` back at the version that served before, and chain the change.

    Returns:
        The version now in production, the one before, and the audit record's id.

    Raises:
        retrieval.registry.RegistryError: There is nothing to roll back to.
    """
    before = registry.production(kind)
    after = registry.rollback(kind, by=by)
    audit_id = record(
        {
            "action": "rollback",
            "model": kind,
            "version": after.ref,
            "previous": before.ref if before else None,
            "forced": False,
            "reason": f"rollback from {before.ref if before else 'nothing'}",
        },
        {"user": by, "via": "candor models rollback"},
    )
    return after, before, audit_id
