"""``bias.html``: a bias audit's findings, per-group quality and exposure, with plots, as one self-contained file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evals.report import STYLE, bar_chart, esc, fmt


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(ci: Sequence[float] | None) -> str:
    return f' <span class="ci">[{fmt(ci[0])}, {fmt(ci[1])}]</span>' if ci else ""


def _quality(task: str, info: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    recs = info["recommenders"]
    attributes = sorted({a for audit in recs.values() for a in audit["groups"]})
    for attribute in attributes:
        metrics = sorted({m for audit in recs.values() for m in audit["groups"].get(attribute, {})})
        for metric in metrics:
            figs = {
                rec: audit["groups"][attribute][metric] for rec, audit in recs.items() if attribute in audit["groups"]
            }
            groups = sorted({g["group"] for fig in figs.values() for g in fig["groups"]})
            series = {}
            for rec, fig in figs.items():
                by = {g["group"]: g for g in fig["groups"]}
                series[rec] = [
                    (by[g]["mean"], *(by[g]["ci"] or (None, None))) if g in by else (0.0, None, None) for g in groups
                ]
            parts.append(f"<h3>{esc(metric)} by {esc(attribute)}</h3>")
            parts.append(bar_chart(f"{task}: {metric} by {attribute}", groups, series, metric))
            rows = [
                [
                    esc(rec),
                    fmt(fig["overall"]),
                    (fmt(fig["difference"]) + _ci(fig["pair_difference_ci"])) if fig["difference"] is not None else "-",
                    (fmt(fig["ratio"]) + _ci(fig["ratio_ci"])) if fig["ratio"] is not None else "-",
                    esc(fig["best"] or "-"),
                    esc(fig["worst"] or "-"),
                    esc(", ".join(fig["excluded_small_groups"]) or "-"),
                ]
                for rec, fig in figs.items()
            ]
            parts.append(_table(["recommender", "overall", "difference", "ratio", "best", "worst", "too small"], rows))
    return parts


def _exposure(task: str, info: Mapping[str, Any]) -> list[str]:
    recs = info["recommenders"]
    names = list(recs)
    series: dict[str, list[tuple[float, float | None, float | None]]] = {
        "item exposure Gini": [(recs[r]["exposure"]["exposure_gini"], None, None) for r in names],
        "popularity bias": [(recs[r]["exposure"]["popularity_bias"], None, None) for r in names],
    }
    if all(recs[r]["exposure"]["providers"] for r in names):
        series["provider Gini"] = [(recs[r]["exposure"]["providers"]["gini"], None, None) for r in names]
    parts = ["<h3>Exposure and popularity bias</h3>", bar_chart(f"{task}: exposure", names, series)]
    rows = []
    for rec in names:
        exp = recs[rec]["exposure"]
        prov = exp["providers"]
        rows.append(
            [
                esc(rec),
                fmt(exp["exposure_gini"]),
                f"{exp['items_exposed']} / {exp['items']}",
                fmt(exp["popularity_bias"]),
                fmt(prov["gini"]) if prov else "-",
                f"{prov['under_exposed']} / {prov['count']}" if prov else "-",
            ]
        )
    parts.append(
        _table(
            ["recommender", "item exposure Gini", "items shown", "popularity bias", "provider Gini", "under-exposed"],
            rows,
        )
    )
    for rec in names:
        prov = recs[rec]["exposure"]["providers"]
        if not prov:
            continue
        parts.append(f"<details><summary>Providers: {esc(rec)}</summary>")
        parts.append(
            _table(
                ["provider", "items", "exposure share", "catalog share", "relevant share", "exposure / catalog"],
                [
                    [
                        esc(r["provider"]),
                        str(r["items"]),
                        fmt(r["exposure_share"]),
                        fmt(r["catalog_share"]),
                        fmt(r["relevant_share"]),
                        fmt(r["exposure_to_catalog"], 2),
                    ]
                    for r in prov["rows"]
                ],
            )
        )
        if prov["rows_left_out"]:
            parts.append(f"<p>{prov['rows_left_out']} providers between the most and least exposed left out.</p>")
        parts.append("</details>")
    return parts


def _where(finding: Mapping[str, Any]) -> str:
    if "attribute" in finding:
        return f"{finding['metric']} by {finding['attribute']}: {finding['worst']} vs {finding['best']}"
    if "category" in finding:
        return f"{finding['category']}, {finding['condition']} contexts"
    return ""


def _answer_bias(answers: Mapping[str, Any]) -> list[str]:
    categories = list(answers["categories"])
    conditions = ("ambiguous", "disambiguated")
    series = {
        f"bias score ({c})": [(answers["categories"][cat][c]["bias_score"] or 0.0, None, None) for cat in categories]
        for c in conditions
    }
    rows = []
    for name, figs in [("all", answers["all"]), *answers["categories"].items()]:
        rows.append(
            [esc(name)]
            + [
                f"{fmt(figs[c]['accuracy'])} / {fmt(figs[c]['bias_score'])} "
                f"(n={figs[c]['n']}, named {figs[c]['named']})"
                for c in conditions
            ]
        )
    parts = [
        f"<h2>Answer bias (BBQ, backend {esc(answers['backend'])})</h2>",
        f"<p>{answers['items']} BBQ items, the context as the backend's only passage. Bias score: -1 always against "
        "the stereotype, 0 none, +1 always with it; in ambiguous contexts it is scaled by the error rate.</p>",
        bar_chart("BBQ bias score by category", categories, series),
        _table(["category", "ambiguous: accuracy / bias", "disambiguated: accuracy / bias"], rows),
    ]
    if answers.get("biased_examples"):
        parts.append("<h3>Biased answers in ambiguous contexts (examples)</h3>")
        parts.append(
            _table(
                ["item", "question", "answer", "read as"],
                [
                    [esc(e["id"]), esc(e["question"]), esc(e["answer"]), esc(e["chosen"])]
                    for e in answers["biased_examples"]
                ],
            )
        )
    return parts


def _counterfactual(probes: Mapping[str, Any]) -> list[str]:
    parts = [
        "<h2>Counterfactual probes</h2>",
        f"<p>{probes['pairs']} pairs of texts differing only in a demographic term (swap list "
        f"{esc(probes.get('swaps') or 'none')}; sources {esc(probes.get('sources'))}) "
        f"from {esc(probes['dataset'])}.</p>",
    ]
    search = probes.get("search")
    if search:
        parts.append(
            f"<h3>Search</h3><p>Mean rank-biased overlap {fmt(search['mean_rbo'])} (lowest {fmt(search['min_rbo'])}); "
            f"mean score shift {fmt(search['mean_score_shift'])} (largest {fmt(search['max_score_shift'])}).</p>"
        )
        parts.append(
            bar_chart(
                "RBO of the pairs with the least overlap",
                [f"{i + 1}" for i in range(len(search["worst"]))],
                {"RBO": [(r["rbo"], None, None) for r in search["worst"]]},
            )
        )
        parts.append(
            _table(
                ["#", "a", "b", "RBO", "score shift", "top of a", "top of b"],
                [
                    [
                        str(i + 1),
                        esc(r["a"]),
                        esc(r["b"]),
                        fmt(r["rbo"]),
                        fmt(r["score_shift"]),
                        esc(", ".join(r["top_a"])),
                        esc(", ".join(r["top_b"])),
                    ]
                    for i, r in enumerate(search["worst"])
                ],
            )
        )
    histories = probes.get("histories")
    if histories:
        parts.append(
            f"<h3>Recommendations from history</h3><p>{histories['pairs']} shoppers' histories with each item whose "
            "title holds a demographic term swapped for the item closest to the swapped title: mean rank-biased "
            f"overlap {fmt(histories['mean_rbo'])} (lowest {fmt(histories['min_rbo'])}), mean score shift "
            f"{fmt(histories['mean_score_shift'])}.</p>"
        )
        parts.append(
            _table(
                ["history", "items swapped", "RBO", "top of a", "top of b"],
                [
                    [esc(r["a"]), esc(r["b"]), fmt(r["rbo"]), esc(", ".join(r["top_a"])), esc(", ".join(r["top_b"]))]
                    for r in histories["worst"]
                ],
            )
        )
    answers = probes.get("answers")
    if answers:
        parts.append(
            f"<h3>Answers ({esc(probes.get('answer_backend'))})</h3><p>The answer changed for "
            f"{fmt(100 * answers['answer_change_rate'], 1)}% of {answers['pairs']} pairs.</p>"
        )
        if answers["worst"]:
            parts.append(
                _table(
                    ["a", "b", "answer to a", "answer to b"],
                    [[esc(r["a"]), esc(r["b"]), esc(r["answer_a"]), esc(r["answer_b"])] for r in answers["worst"]],
                )
            )
    return parts


def render_bias(report: Mapping[str, Any]) -> str:
    """The HTML report of one bias audit."""
    head = {
        "run id": report.get("run_id"),
        "generated": report.get("generated_at"),
        "suite": f"{report.get('suite')} ({report.get('suite_path')}, {report.get('suite_hash')})",
        "git": f"{report.get('git_sha')}{' (uncommitted changes)' if report.get('git_dirty') else ''}",
        "seed": report.get("seed"),
        "bootstrap": report.get("bootstrap"),
        "thresholds": {k: v for k, v in (report.get("thresholds") or {}).items() if v not in (None, [])},
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Candor bias audit {esc(report.get('suite'))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Candor bias audit: {esc(report.get('suite'))}</h1>",
        _table(["", ""], [[esc(k), esc(v)] for k, v in head.items()]),
    ]
    for note in report.get("notes", []):
        parts.append(f'<div class="banner">{esc(note)}</div>')
    found = report.get("findings") or []
    parts.append(f"<h2>Findings ({len(found)})</h2>")
    if found:
        parts.append(
            _table(
                ["check", "task", "recommender", "where", "value", "threshold"],
                [
                    [
                        f'<span class="fail">{esc(f["check"])}</span>',
                        esc(f["task"]),
                        esc(f["recommender"]),
                        esc(_where(f)),
                        fmt(f["value"]),
                        esc(f["threshold"]),
                    ]
                    for f in found
                ],
            )
        )
    else:
        parts.append('<p class="pass">No figure past the suite\'s thresholds.</p>')
    for task, info in (report.get("tasks") or {}).items():
        parts.append(
            f"<h2>{esc(task)}</h2><p>{esc(info['dataset'])}, {esc(info['protocol'])}, k={info['k']}: "
            f"{info['users']} users, {info['items']} items; groups under {info['min_group_size']} users are shown "
            "but left out of differences and ratios. Intervals of a difference and a ratio resample the best and "
            "the worst group (bias.json also holds the harness's max-min interval, <code>difference_ci</code>).</p>"
        )
        parts += _quality(task, info)
        parts += _exposure(task, info)
    if report.get("counterfactual"):
        parts += _counterfactual(report["counterfactual"])
    if report.get("answer_bias"):
        parts += _answer_bias(report["answer_bias"])
    parts.append("<h2>Not run</h2><ul>")
    parts += [f"<li>{esc(text)}</li>" for text in (report.get("not_run") or {}).values()]
    parts.append("</ul><h2>Library versions</h2>")
    parts.append(_table(["", ""], [[esc(k), esc(v)] for k, v in (report.get("library_versions") or {}).items()]))
    parts.append("</body></html>")
    return "".join(parts)


def write_bias_report(report: Mapping[str, Any], path: Path) -> None:
    """Write a bias audit's HTML report."""
    path.write_text(render_bias(report), encoding="utf-8")
