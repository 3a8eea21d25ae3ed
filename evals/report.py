"""Self-contained HTML reports: a run's tables and plots, and the diff of two runs.

Plots are drawn with matplotlib's object API (no global pyplot state) and embedded as PNG data URIs, so a report is
one file that can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#777;font-size:.8rem}.pass{color:#17612a;font-weight:600}.fail{color:#a11;font-weight:600}.skip{color:#777}
.banner{background:#fff6d6;border:1px solid #e6c200;padding:.5rem .75rem;margin:.5rem 0}
.better{background:#e8f6ec}.worse{background:#fbe9e9}code{font-size:.85rem}
"""


_GATE_STATUS = {
    "passed": '<span class="pass">pass</span>',
    "failed": '<span class="fail">FAIL</span>',
    "skipped": '<span class="skip">skipped</span>',
}


def esc(value: object) -> str:
    """HTML-escape any value's text."""
    return html.escape("" if value is None else str(value))


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a table cell."""
    return "" if value is None else f"{value:.{digits}f}"


def _ci(metric: Mapping[str, Any]) -> str:
    if metric.get("ci_low") is None:
        return ""
    return f' <span class="ci">[{fmt(metric["ci_low"])}, {fmt(metric["ci_high"])}]</span>'


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float | None, float | None]]],
    ylabel: str = "",
) -> str:
    """A grouped bar chart with interval whiskers, as an ``<img>`` tag.

    Args:
        title: Chart title.
        categories: X-axis groups.
        series: Series name to one ``(value, ci_low, ci_high)`` per category.
        ylabel: Y-axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    width = 0.8 / max(len(series), 1)
    inches = min(11.0, max(5.0, 2.0 + 0.175 * len(categories) * max(len(series), 1)))
    fig = Figure(figsize=(inches, 3.4), dpi=100)
    ax = fig.add_subplot()
    for s_index, (name, points) in enumerate(series.items()):
        xs = [i + (s_index - (len(series) - 1) / 2) * width for i in range(len(categories))]
        values = [p[0] for p in points]
        lower = [p[0] - p[1] if p[1] is not None else 0.0 for p in points]
        upper = [p[2] - p[0] if p[2] is not None else 0.0 for p in points]
        ax.bar(xs, values, width=width, label=name, yerr=[lower, upper], capsize=3)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(
        categories, rotation=30 if len(categories) > 4 else 0, ha="right" if len(categories) > 4 else "center"
    )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{esc(title)}" src="data:image/png;base64,{data}">'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>" for i, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _kv(pairs: Mapping[str, Any]) -> str:
    return _table(["", ""], [[esc(k), esc(v)] for k, v in pairs.items()], numeric_from=99)


def _row_label(metric: Mapping[str, Any]) -> str:
    """The system, and the setting its questions were posed in when a task poses them in several."""
    setting = metric.get("setting")
    return f"{metric['system']} ({setting})" if setting else str(metric["system"])


def _task_section(task: str, info: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]]) -> str:
    parts = [f"<h2>{esc(task)} <small>({esc(info['kind'])}, {esc(info['dataset'])})</small></h2>"]
    if info.get("status") in ("skipped", "disabled"):
        parts.append(
            f'<div class="banner">{esc(str(info["status"]).capitalize())}: {esc(info.get("skipped_reason"))}</div>'
        )
        return "".join(parts)
    for sentence in info.get("details", {}).get("attribution", []):
        parts.append(f"<p>{esc(sentence)}</p>")
    details = {k: v for k, v in info.get("details", {}).items() if not isinstance(v, dict | list)}
    if "cache" in info.get("details", {}):
        cache = info["details"]["cache"]
        details["embedding cache"] = "hit" if cache.get("hit") else "miss (embedded and stored)"
    timings = info.get("details", {}).get("timings_s")
    if timings:
        details.update({f"{k} (s)": v for k, v in timings.items()})
    details["task seconds"] = info.get("seconds")
    parts.append(_kv(details))
    overall = [m for m in metrics if m.get("group") is None]
    systems = list(dict.fromkeys(_row_label(m) for m in overall))
    names = list(dict.fromkeys(m["name"] for m in overall))
    rows = []
    for system in systems:
        row = [esc(system)]
        for name in names:
            found = [m for m in overall if _row_label(m) == system and m["name"] == name]
            row.append(fmt(found[0]["value"]) + _ci(found[0]) if found else "")
        rows.append(row)
    arrows = {m["name"]: "↑" if m["higher_is_better"] else "↓" for m in overall}
    parts.append(_table(["system", *[f"{n} {arrows[n]}" for n in names]], rows))
    plotted = [n for n in names if n.startswith(("ndcg", "hr@", "recall", "mrr", "f1", "em", "map"))][:4]
    if plotted:
        series = {
            system: [
                next(
                    (
                        (m["value"], m.get("ci_low"), m.get("ci_high"))
                        for m in overall
                        if _row_label(m) == system and m["name"] == n
                    ),
                    (0.0, None, None),
                )
                for n in plotted
            ]
            for system in systems
        }
        parts.append(bar_chart(f"{task}: quality with {info.get('confidence', 95)}% intervals", plotted, series))
    grouped = [m for m in metrics if m.get("group") is not None and ":" in str(m.get("group"))]
    gaps = [m for m in metrics if m.get("group") is not None and ":" not in str(m.get("group"))]
    attributes = list(dict.fromkeys(str(m["group"]).split(":", 1)[0] for m in grouped))
    for attribute in attributes:
        parts.append(f"<h3>By {esc(attribute)}</h3>")
        in_attr = [m for m in grouped if str(m["group"]).startswith(attribute + ":")]
        metric_names = list(dict.fromkeys(m["name"] for m in in_attr))
        groups = list(dict.fromkeys(str(m["group"]).split(":", 1)[1] for m in in_attr))
        headers = ["group", "n"] + [f"{s} {n}" for n in metric_names for s in systems]
        rows = []
        for group in groups:
            row = [esc(group)]
            sizes = [m["n"] for m in in_attr if m["group"] == f"{attribute}:{group}"]
            row.append(str(sizes[0]) if sizes else "")
            for name in metric_names:
                for system in systems:
                    found = [
                        m
                        for m in in_attr
                        if _row_label(m) == system and m["name"] == name and m["group"] == f"{attribute}:{group}"
                    ]
                    row.append(fmt(found[0]["value"]) + _ci(found[0]) if found else "")
            rows.append(row)
        gap_row = ["max-min gap", ""]
        for name in metric_names:
            for system in systems:
                found = [
                    m
                    for m in gaps
                    if _row_label(m) == system and m["name"] == f"{name}.gap" and m["group"] == attribute
                ]
                gap_row.append(fmt(found[0]["value"]) + _ci(found[0]) if found else "")
        rows.append([f"<b>{c}</b>" if c else c for c in gap_row])
        parts.append(_table(headers, rows, numeric_from=1))
        excluded = sorted(
            {
                group
                for rec in info.get("details", {}).get("recommenders", {}).values()
                for stats in rec.get("groups", {}).get(attribute, {}).values()
                for group in stats.get("excluded_small_groups", [])
            }
        )
        if excluded:
            parts.append(f"<p>Shown but left out of the gap (too few users): {esc(', '.join(excluded))}.</p>")
        if metric_names:
            focus = next((n for n in metric_names if n.startswith("ndcg")), metric_names[0])
            series = {
                system: [
                    next(
                        (
                            (m["value"], m.get("ci_low"), m.get("ci_high"))
                            for m in in_attr
                            if _row_label(m) == system and m["name"] == focus and m["group"] == f"{attribute}:{g}"
                        ),
                        (0.0, None, None),
                    )
                    for g in groups
                ]
                for system in systems
            }
            parts.append(bar_chart(f"{focus} by {attribute}", groups, series))
    return "".join(parts)


def _scope_table(tasks: Mapping[str, Mapping[str, Any]]) -> str:
    """What every task scored: dataset, split (or protocol), sample size, seed and whether it ran."""
    rows = [
        [
            esc(task),
            esc(info.get("dataset")),
            esc(info.get("split")),
            esc(info.get("sample")),
            esc(info.get("seed")),
            esc(info.get("status")),
        ]
        for task, info in tasks.items()
    ]
    return _table(["task", "dataset", "split", "sample", "seed", "status"], rows, numeric_from=99)


def render_run(results: Mapping[str, Any]) -> str:
    """The HTML report of one run."""
    metrics = results.get("metrics", [])
    head = {
        "run id": results.get("run_id"),
        "suite": f"{results.get('suite')} ({results.get('suite_path')}, {results.get('suite_hash')})",
        "overrides": ", ".join(results.get("overrides", [])) or "none",
        "git": f"{results.get('git_sha')}{' (uncommitted changes)' if results.get('git_dirty') else ''}",
        "started": results.get("started_at"),
        "wall time (s)": results.get("wall_time_s"),
        "seed": results.get("seed"),
        "bootstrap": results.get("bootstrap"),
        "baseline": (results.get("baseline") or {}).get("run_id", "none"),
    }
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Candor eval {esc(results.get('suite'))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Candor evaluation: {esc(results.get('suite'))}</h1>",
        _kv(head),
        _scope_table(results.get("tasks", {})),
    ]
    for note in results.get("notes", []):
        parts.append(f'<div class="banner">{esc(note)}</div>')
    gates = results.get("gates", [])
    parts.append("<h2>Gates</h2>")
    if gates:
        rows = [
            [
                esc(g["rule"]),
                _GATE_STATUS[g.get("status") or ("passed" if g["passed"] else "failed")],
                esc(g["reason"]),
            ]
            for g in gates
        ]
        parts.append(_table(["rule", "result", "detail"], rows, numeric_from=99))
    else:
        parts.append("<p>No gates in this suite.</p>")
    system = results.get("system", {})
    parts.append("<h2>System under test</h2>")
    encoder = system.get("encoder") or {}
    if encoder:
        parts.append("<h3>Encoder</h3>" + _kv(encoder))
    parts.append("<h3>Index</h3>" + _kv(system.get("index", {})))
    answer = system.get("answer_backend")
    if answer:  # only suites with an answers task use one
        parts.append("<h3>Answer backend</h3>" + _kv(answer))
    for task, recs in system.get("recommenders", {}).items():
        parts.append(f"<h3>Recommenders ({esc(task)})</h3>")
        parts.append(_table(["recommender", "settings"], [[esc(n), esc(s)] for n, s in recs.items()], numeric_from=99))
    parts.append("<h2>Datasets</h2>")
    parts.append(
        _table(
            ["name", "path", "hash"],
            [[esc(d["name"]), esc(d["path"]), f"<code>{esc(d['hash'])}</code>"] for d in results.get("datasets", [])],
            numeric_from=99,
        )
    )
    confidence = round(100 * (results.get("bootstrap") or {}).get("confidence", 0.95))
    for task, info in results.get("tasks", {}).items():
        parts.append(
            _task_section(task, {**info, "confidence": confidence}, [m for m in metrics if m.get("task") == task])
        )
    parts.append("<h2>Library versions</h2>" + _kv(results.get("library_versions", {})))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(results: Mapping[str, Any], path: Path) -> None:
    """Write a run's HTML report."""
    path.write_text(render_run(results), encoding="utf-8")


def render_diff(title: str, head: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The HTML diff of two runs.

    Args:
        title: Page title.
        head: Facts about the two runs.
        rows: One entry per metric: ``key``, ``a``, ``b``, ``diff``, ``ci_low``, ``ci_high``, ``verdict``.
    """
    table_rows = []
    for row in rows:
        css = {"better": "better", "worse": "worse"}.get(str(row.get("verdict")), "")
        ci = f"[{fmt(row.get('ci_low'))}, {fmt(row.get('ci_high'))}]" if row.get("ci_low") is not None else "n/a"
        table_rows.append(
            f'<tr class="{css}"><td>{esc(row["key"])}</td><td class="num">{fmt(row.get("a"))}</td>'
            f'<td class="num">{fmt(row.get("b"))}</td><td class="num">{fmt(row.get("diff"), 4)}</td>'
            f'<td class="num">{ci}</td><td>{esc(row.get("verdict"))}</td></tr>'
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>{_kv(head)}"
        "<table><tr><th>metric</th><th>A</th><th>B</th><th>B - A</th><th>paired 95% interval</th><th>verdict</th></tr>"
        f"{''.join(table_rows)}</table></body></html>"
    )
