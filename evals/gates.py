"""Regression gates: rules a run's metrics must satisfy before a model or index is promoted.

A rule reads ``METRIC[FILTERS] OP BOUND``:

- ``METRIC`` is a metric name as in ``results.json`` (``ndcg@10``, ``hr@10``, ``ndcg@10.gap``, ...);
- ``FILTERS`` (optional) narrow it down: ``task=``, ``dataset=``, ``split=``, ``system=``, ``setting=``
  (``open`` or ``gold`` for answers), ``group=``, with shell-style wildcards (``system=*``, ``group=gender:*``).
  Without ``group=`` only overall figures match;
- ``OP`` is one of ``>= <= > < ==``;
- ``BOUND`` is a number; ``baseline``, ``baseline + x``, ``baseline - x`` or ``baseline * x``, where ``baseline`` is
  the same figure in the baseline run; or another figure of the same run, ``METRIC[FILTERS]`` optionally followed by
  ``+ x``, ``- x`` or ``* x`` (its selector must match exactly one figure).

Every metric the selector matches must satisfy the rule; a rule that matches nothing fails, so a gate cannot
pass by accident when a task was skipped. A rule that compares with a baseline when no baseline run was given is
skipped (it neither passes nor fails the run, and says so), and so is a rule that matches nothing because the
tasks it names were disabled (``enabled = false``). Examples::

    "ndcg@10[task=retrieval.scifact] >= baseline - 0.01"
    "hr@10[system=embedding] >= 0.05"
    "ndcg@10.gap[group=gender] <= 0.05"
    "ndcg@10[task=recommendation.loo, system=candor-hybrid] >= ndcg@10[task=recommendation.loo, system=item-knn] * 1.3"
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evals.errors import GateError
from evals.results import MetricRecord

_RULE = re.compile(
    r"^\s*(?P<metric>[A-Za-z0-9_@.\-]+)\s*(?:\[(?P<filters>[^\]]*)\])?\s*(?P<op>>=|<=|==|>|<)\s*(?P<bound>.+?)\s*$"
)
_BOUND = re.compile(r"^baseline(?:\s*(?P<op>[-+*])\s*(?P<num>[0-9.eE+-]+))?$")
_REFERENCE = re.compile(
    r"^(?P<metric>[A-Za-z][A-Za-z0-9_@.\-]*)\s*(?:\[(?P<filters>[^\]]*)\])?(?:\s*(?P<op>[-+*])\s*(?P<num>[0-9.eE+-]+))?$"
)
_FILTER_KEYS = ("task", "dataset", "split", "system", "setting", "group")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed gate rule.

    Attributes:
        text: The rule as written.
        metric: Metric name.
        filters: Field to wildcard pattern.
        op: Comparison.
        constant: The bound when it is a number.
        baseline_op: ``+``, ``-``, ``*`` or ``""`` when the bound uses the baseline or another figure.
        baseline_arg: The number combined with the baseline value or the other figure.
        reference: The other figure of the same run the bound is made from, if it is one.
    """

    text: str
    metric: str
    filters: Mapping[str, str]
    op: str
    constant: float | None
    baseline_op: str | None = None
    baseline_arg: float = 0.0
    reference: Rule | None = None

    @property
    def uses_baseline(self) -> bool:
        """Whether the bound refers to a baseline run."""
        return self.baseline_op is not None and self.reference is None

    def matches(self, metric: MetricRecord) -> bool:
        """Whether the selector picks this metric."""
        if metric.name != self.metric:
            return False
        if "group" not in self.filters and metric.group is not None:
            return False
        for key, pattern in self.filters.items():
            value = getattr(metric, key)
            if value is None or not fnmatch.fnmatchcase(str(value), pattern):
                return False
        return True

    def bound(self, baseline: float | None) -> float:
        """The threshold, given the baseline value when the rule uses one."""
        if self.constant is not None:
            return self.constant
        assert baseline is not None
        if self.baseline_op == "+":
            return baseline + self.baseline_arg
        if self.baseline_op == "-":
            return baseline - self.baseline_arg
        if self.baseline_op == "*":
            return baseline * self.baseline_arg
        return baseline

    def describe_bound(self, baseline: float | None) -> str:
        """The threshold with how it was computed."""
        if self.constant is not None:
            return f"{self.op} {self.constant:g}"
        suffix = f" {self.baseline_op} {self.baseline_arg:g}" if self.baseline_op else ""
        source = "baseline" if self.reference is None else self.reference.text
        return f"{self.op} {self.bound(baseline):.4f} ({source} {baseline:.4f}{suffix})"


def _filters(text: str, rule: str) -> dict[str, str]:
    filters: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _FILTER_KEYS or not value.strip():
            raise GateError(f"gate {rule!r}: filter {part.strip()!r} must be KEY=VALUE with KEY in {_FILTER_KEYS}")
        filters[key] = value.strip()
    return filters


def _number(text: str | None, rule: str) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError as exc:
        raise GateError(f"gate {rule!r}: {text!r} is not a number") from exc


def parse_rule(text: str) -> Rule:
    """Parse one gate rule.

    Raises:
        GateError: The rule does not follow ``METRIC[FILTERS] OP BOUND``.
    """
    match = _RULE.match(text)
    if not match:
        raise GateError(f"gate {text!r}: expected METRIC[FILTERS] OP BOUND, e.g. 'ndcg@10 >= baseline - 0.01'")
    filters = _filters(match.group("filters") or "", text)
    metric, op = match.group("metric"), match.group("op")
    bound = match.group("bound").strip()
    baseline = _BOUND.match(bound)
    if baseline:
        return Rule(text, metric, filters, op, None, baseline.group("op") or "", _number(baseline.group("num"), text))
    try:
        return Rule(text, metric, filters, op, float(bound))
    except ValueError:
        pass
    other = _REFERENCE.match(bound)
    if not other:
        raise GateError(
            f"gate {text!r}: the bound must be a number, baseline [+-*] number, or METRIC[FILTERS] [+-*] number"
        )
    reference_text = bound[: other.start("op")].strip() if other.group("op") else bound
    reference = Rule(reference_text, other.group("metric"), _filters(other.group("filters") or "", text), op, None)
    return Rule(text, metric, filters, op, None, other.group("op") or "", _number(other.group("num"), text), reference)


@dataclass(frozen=True, slots=True)
class GateResult:
    """The outcome of one rule.

    Attributes:
        rule: The rule as written.
        passed: Whether every matched metric satisfied it (true for a skipped rule: it does not fail the run).
        reason: One readable line: what failed and by how much, what passed, or why it was skipped.
        checks: One entry per matched metric (key, value, threshold, passed).
        skipped: The rule needs a baseline run and none was given, or names only disabled tasks.
    """

    rule: str
    passed: bool
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    @property
    def status(self) -> str:
        """``passed``, ``failed`` or ``skipped``."""
        return "skipped" if self.skipped else "passed" if self.passed else "failed"

    def to_json(self) -> dict[str, Any]:
        """As a ``gates`` entry of ``results.json``."""
        return {
            "rule": self.rule,
            "passed": self.passed,
            "status": self.status,
            "reason": self.reason,
            "checks": self.checks,
        }


def _disabled_only(rule: Rule, matched: Sequence[MetricRecord], disabled: Collection[str]) -> list[str]:
    """The disabled tasks a rule (or the figure its bound refers to) names, when that is why it matches nothing."""
    pattern = rule.filters.get("task")
    if matched or pattern is None:
        return []
    return sorted(t for t in disabled if fnmatch.fnmatchcase(t, pattern))


def evaluate_rule(
    rule: Rule,
    metrics: Sequence[MetricRecord],
    baseline: Sequence[MetricRecord] | None,
    baseline_name: str = "",
    disabled: Collection[str] = (),
) -> GateResult:
    """Check one rule against a run's metrics (and a baseline run's, when the rule uses one).

    Args:
        rule: The rule.
        metrics: The run's figures.
        baseline: The baseline run's figures, if one was given.
        baseline_name: The baseline's run id, for messages.
        disabled: Tasks the suite disabled: a rule that matches nothing because of them is skipped.
    """
    matched = [m for m in metrics if rule.matches(m)]
    referenced = [m for m in metrics if rule.reference.matches(m)] if rule.reference is not None else []
    off = _disabled_only(rule, matched, disabled)
    if rule.reference is not None and not off:
        off = _disabled_only(rule.reference, referenced, disabled)
    if off:
        return GateResult(
            rule.text, True, f"{rule.text}: skipped: task {', '.join(off)} is disabled (enabled = false)", skipped=True
        )
    if not matched:
        return GateResult(rule.text, False, f"{rule.text}: no metric in this run matches (was the task skipped?)")
    if rule.uses_baseline and baseline is None:
        return GateResult(
            rule.text,
            True,
            f"{rule.text}: skipped: it compares with a baseline run and none was given (gates.baseline or --baseline)",
            skipped=True,
        )
    if rule.reference is not None and len(referenced) != 1:
        return GateResult(
            rule.text, False, f"{rule.text}: {rule.reference.text} matches {len(referenced)} figures, not one"
        )
    by_key = {m.key: m for m in baseline or ()}
    checks: list[dict[str, Any]] = []
    failures: list[str] = []
    for metric in matched:
        base_value: float | None = None
        if rule.reference is not None:
            base_value = referenced[0].value
        elif rule.uses_baseline:
            base = by_key.get(metric.key)
            if base is None:
                failures.append(f"{metric.key} is not in the baseline run {baseline_name}".rstrip())
                checks.append({"key": metric.key, "value": metric.value, "threshold": None, "passed": False})
                continue
            base_value = base.value
        threshold = rule.bound(base_value)
        ok = _OPS[rule.op](metric.value, threshold)
        checks.append({"key": metric.key, "value": metric.value, "threshold": threshold, "passed": ok})
        if not ok:
            failures.append(f"{metric.key} = {metric.value:.4f}, needs {rule.describe_bound(base_value)}")
    if failures:
        return GateResult(rule.text, False, f"{rule.text}: " + "; ".join(failures), checks)
    return GateResult(rule.text, True, f"{rule.text}: {len(checks)} figure(s) pass", checks)


def evaluate_gates(
    rules: Sequence[str],
    metrics: Sequence[MetricRecord],
    baseline: Sequence[MetricRecord] | None,
    baseline_name: str = "",
    disabled: Collection[str] = (),
) -> list[GateResult]:
    """Check every rule; see :func:`evaluate_rule`."""
    return [evaluate_rule(parse_rule(text), metrics, baseline, baseline_name, disabled) for text in rules]
