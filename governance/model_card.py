"""Model cards for the serving models, as Markdown and JSON, from the same facts as the compliance report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from governance.report import ModelFacts, headline_metrics

CARD_SCHEMA = "candor.model-card/1"
OUT_OF_SCOPE: tuple[str, ...] = (
    "Decisions about people: credit, employment, insurance, eligibility for services.",
    "Medical, legal, financial or safety advice.",
    "Languages other than English without a fine-tuned, evaluated encoder.",
    "Inferring personal attributes (age, gender, ethnicity) from text.",
)


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a model card states.

    Attributes:
        generated_at: When it was produced.
        model: The model (name, weights hash, path, licence, dims, max sequence length).
        intended_use: What the model is used for in Candor.
        limitations: Known limitations.
        evaluation: The latest evaluation run (condensed ``results.json``), or ``None``.
        config_hash: Digest of the settings it serves under.
        code_hash: Code version it serves under.
        out_of_scope: Uses it is not meant for.
    """

    generated_at: datetime
    model: ModelFacts
    intended_use: str
    limitations: tuple[str, ...]
    evaluation: Mapping[str, Any] | None
    config_hash: str
    code_hash: str
    out_of_scope: tuple[str, ...] = OUT_OF_SCOPE


def _encoder_metrics(evaluation: Mapping[str, Any] | None, version: str) -> list[Mapping[str, Any]]:
    """Headline figures the evaluation measured with these exact weights (encoder-based systems only)."""
    if not evaluation:
        return []
    evaluated = ((evaluation.get("system") or {}).get("encoder") or {}).get("version")
    if evaluated != version:
        return []
    # Other recommenders (popularity, item-kNN, ALS) in the same run do not use the encoder.
    return [m for m in headline_metrics(evaluation) if m.get("series") in (None, "embedding")]


def model_card_to_json(card: ModelCard) -> dict[str, Any]:
    """The model card as JSON-ready data."""
    model = card.model
    evaluation = card.evaluation
    metrics = _encoder_metrics(evaluation, model.version)
    return {
        "schema": CARD_SCHEMA,
        "generated_at": card.generated_at.isoformat(),
        "model": {name: getattr(model, name) for name in ModelFacts.__slots__},
        "intended_use": card.intended_use,
        "out_of_scope": list(card.out_of_scope),
        "limitations": list(card.limitations),
        "evaluation": None
        if not evaluation
        else {
            "run_id": evaluation.get("run_id"),
            "suite": evaluation.get("suite"),
            "started_at": evaluation.get("started_at"),
            "evaluated_weights": ((evaluation.get("system") or {}).get("encoder") or {}).get("version"),
            "metrics": [
                {k: m[k] for k in ("key", "name", "value", "ci_low", "ci_high", "n", "task", "system") if k in m}
                for m in metrics
            ],
        },
        "config_hash": card.config_hash,
        "code_hash": card.code_hash,
    }


def render_model_card_markdown(card: ModelCard) -> str:
    """The model card as Markdown."""
    model = card.model
    lines = [
        f"# Model card: {model.name} ({model.role})",
        "",
        f"Generated {card.generated_at.isoformat(timespec='seconds')} by `candor report model-card`.",
        "",
        "## Model",
        "",
        "| field | value |",
        "|---|---|",
        f"| name | {model.name} |",
        f"| weights hash | `{model.version}` |",
        f"| path | `{model.path}` |",
        f"| licence | {model.license or 'not declared'} |",
        f"| licence file shipped | {f'`{model.license_file}`' if model.license_file else 'none'} |",
        f"| embedding dimensions | {model.dim if model.dim is not None else '-'} |",
        f"| max sequence length (tokens) | {model.max_seq_length if model.max_seq_length is not None else '-'} |",
        f"| device / dtype | {model.device or '-'} / {model.dtype or '-'} |",
        f"| config hash | `{card.config_hash}` |",
        f"| code | `{card.code_hash}` |",
        "",
        "## Intended use",
        "",
        card.intended_use,
        "",
        "## Out of scope",
        "",
        *[f"- {item}" for item in card.out_of_scope],
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card.limitations],
        "",
        "## Evaluation",
        "",
    ]
    evaluation = card.evaluation
    metrics = _encoder_metrics(evaluation, model.version)
    if not evaluation:
        lines.append("Evaluation: not yet run. No evaluation run found (run `candor eval run <suite>`).")
    elif not metrics:
        lines.append(
            f"The latest evaluation run `{evaluation.get('run_id')}` has no figures measured with these weights "
            "(it did not evaluate this encoder)."
        )
    else:
        lines += [
            f"Latest evaluation run `{evaluation.get('run_id')}` (suite {evaluation.get('suite')}, "
            f"started {evaluation.get('started_at')}).",
            "",
            "| metric | system | value | 95% interval | n |",
            "|---|---|---|---|---|",
        ]
        for m in metrics:
            ci = f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if "ci_low" in m else "-"
            lines.append(
                f"| `{m['key']}` | {m.get('system', '')} | {float(m['value']):.4f} | {ci} | {m.get('n', '')} |"
            )
    return "\n".join(lines) + "\n"
