"""Rule-derived search judgments for a domain pack: shopper queries plus explicit rules over catalog fields.

A rules file (``eval/rules.toml``) lists queries; each has a ``match`` table (what makes an item relevant at all,
grade 1) and an optional ``prefer`` table (what an item must also meet for grade 2). Conditions in a table must all
hold:

- ``category``: any of these category path prefixes (level by level, case-insensitive);
- ``title``: every phrase occurs in the title; ``title_any``: at least one does;
- ``text``: every phrase occurs in the title, description or attribute values; ``text_any``: at least one does;
- ``brand``: the brand is one of these (case-insensitive);
- ``price_max`` / ``price_min``: the price bounds (items without a price fail them);
- ``attr``: ``{name = [values]}``, the attribute's value contains one of the values as a phrase.

Phrases match whole lower-cased words with a crude plural folding ("towels" matches "towel"; see
:mod:`retrieval.text`). The judgments are derived by these rules, not by people: they are as good as the rules
and the catalog's fields.

Run ``python -m evals.pack_judgments data/demo`` to rewrite ``eval/queries.jsonl`` and ``eval/qrels.tsv`` from
``eval/rules.toml``.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.errors import DatasetFormatError
from retrieval.pack import load_pack
from retrieval.text import stems
from retrieval.types import Item, split_category

_CONDITIONS = {"category", "title", "title_any", "text", "text_any", "brand", "price_max", "price_min", "attr"}


def has_phrase(haystack: Sequence[str], phrase: str) -> bool:
    """Whether the words of ``phrase`` occur contiguously in ``haystack`` (a word list)."""
    needle = stems(phrase)
    if not needle:
        return True
    size = len(needle)
    return any(list(haystack[i : i + size]) == needle for i in range(len(haystack) - size + 1))


@dataclass(frozen=True, slots=True)
class _Fields:
    title: list[str]
    text: list[str]


def _fields(item: Item) -> _Fields:
    attrs = " ".join(str(v) for v in item.attributes.values() if v is not None)
    return _Fields(stems(item.title), stems(f"{item.title} {item.text} {attrs}"))


def _category(item: Item, prefixes: Sequence[str]) -> bool:
    have = [p.casefold() for p in split_category(item.category)]
    wanted = [[p.casefold() for p in split_category(c)] for c in prefixes]
    return any(have[: len(p)] == p for p in wanted)


def _attributes(item: Item, wanted: Mapping[str, Sequence[str]]) -> bool:
    for name, values in wanted.items():
        have = stems(str(item.attributes.get(name) or ""))
        if not have or not any(has_phrase(have, str(v)) for v in values):
            return False
    return True


def _condition(item: Item, fields: _Fields, name: str, value: Any) -> bool:
    checks: dict[str, Callable[[], bool]] = {
        "category": lambda: _category(item, value),
        "title": lambda: all(has_phrase(fields.title, p) for p in value),
        "title_any": lambda: any(has_phrase(fields.title, p) for p in value),
        "text": lambda: all(has_phrase(fields.text, p) for p in value),
        "text_any": lambda: any(has_phrase(fields.text, p) for p in value),
        "brand": lambda: (item.brand or "").casefold() in {b.casefold() for b in value},
        "price_max": lambda: item.price is not None and item.price <= float(value),
        "price_min": lambda: item.price is not None and item.price >= float(value),
        "attr": lambda: _attributes(item, value),
    }
    return checks[name]()


def meets(item: Item, fields: _Fields, conditions: Mapping[str, Any]) -> bool:
    """Whether ``item`` satisfies every condition of one table."""
    return all(_condition(item, fields, name, value) for name, value in conditions.items())


@dataclass(frozen=True, slots=True)
class QueryRule:
    """One shopper query with the rules that judge items for it."""

    id: str
    text: str
    kind: str
    match: Mapping[str, Any]
    prefer: Mapping[str, Any]

    def grade(self, item: Item, fields: _Fields) -> int:
        """0 (not relevant), 1 (relevant) or 2 (relevant and meets every preference)."""
        if not meets(item, fields, self.match):
            return 0
        return 2 if self.prefer and meets(item, fields, self.prefer) else 1


def load_rules(path: Path) -> list[QueryRule]:
    """Read and check a rules file.

    Raises:
        DatasetFormatError: The file is not valid TOML or a query is malformed.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DatasetFormatError(path, None, f"invalid TOML ({exc})") from exc
    rules: list[QueryRule] = []
    seen: set[str] = set()
    for index, raw in enumerate(data.get("query", [])):
        where = f"query #{index + 1}"
        qid, text = raw.get("id"), raw.get("text")
        if not isinstance(qid, str) or not isinstance(text, str) or not text.strip():
            raise DatasetFormatError(path, None, f"{where}: needs string 'id' and 'text'")
        if qid in seen:
            raise DatasetFormatError(path, None, f"{where}: duplicate id {qid!r}")
        match, prefer = raw.get("match", {}), raw.get("prefer", {})
        for table in (match, prefer):
            unknown = set(table) - _CONDITIONS
            if unknown:
                raise DatasetFormatError(path, None, f"{qid}: unknown condition(s) {sorted(unknown)}")
        if not match:
            raise DatasetFormatError(path, None, f"{qid}: a query needs a non-empty 'match' table")
        seen.add(qid)
        rules.append(QueryRule(qid, text, str(raw.get("kind", "")), match, prefer))
    return rules


def derive(rules: Sequence[QueryRule], items: Sequence[Item]) -> dict[str, dict[str, int]]:
    """Grades of every item for every query (only grades above 0 are kept)."""
    fields = [(item, _fields(item)) for item in items]
    qrels: dict[str, dict[str, int]] = {}
    for rule in rules:
        judged = {item.id: g for item, f in fields if (g := rule.grade(item, f)) > 0}
        qrels[rule.id] = judged
    return qrels


def render(rules: Sequence[QueryRule], qrels: Mapping[str, Mapping[str, int]]) -> tuple[str, str]:
    """The ``queries.jsonl`` and ``qrels.tsv`` texts (BEIR format)."""
    queries = "".join(json.dumps({"_id": r.id, "text": r.text}, ensure_ascii=False) + "\n" for r in rules)
    lines = ["query-id\tcorpus-id\tscore\n"]
    for rule in rules:
        for doc, grade in sorted(qrels[rule.id].items()):
            lines.append(f"{rule.id}\t{doc}\t{grade}\n")
    return queries, "".join(lines)


def main(argv: Sequence[str]) -> int:
    """Rewrite a pack's ``eval/queries.jsonl`` and ``eval/qrels.tsv`` from ``eval/rules.toml``."""
    if len(argv) != 1:
        print("usage: python -m evals.pack_judgments PACK_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    rules = load_rules(folder / "eval" / "rules.toml")
    qrels = derive(rules, load_pack(folder).items)
    empty = [r.id for r in rules if not qrels[r.id]]
    if empty:
        print(f"queries with no relevant item: {', '.join(empty)}", file=sys.stderr)
        return 1
    queries, qrels_text = render(rules, qrels)
    (folder / "eval" / "queries.jsonl").write_text(queries, encoding="utf-8")
    (folder / "eval" / "qrels.tsv").write_text(qrels_text, encoding="utf-8")
    counts = ", ".join(f"{r.id}:{len(qrels[r.id])}" for r in rules)
    print(f"{len(rules)} queries, {sum(len(j) for j in qrels.values())} judgments ({counts})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
