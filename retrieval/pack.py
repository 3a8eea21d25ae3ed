"""Domain packs: the folder of JSON Lines files a product team brings (items, documents, interactions, users).

Every line is validated on load; problems are reported as ``file:line: field: problem`` so a data engineer can
fix them without reading code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from retrieval.errors import PackValidationError
from retrieval.types import EVENT_TYPES, Interaction, Item

MAX_ID_CHARS = 200
MAX_REPORTED_PROBLEMS = 200

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Document:
    """A knowledge-base passage for grounded answers."""

    id: str
    title: str
    text: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class User:
    """A user's group attributes (age band, gender, ...), used only for audits, never for ranking."""

    user_id: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DomainPack:
    """A validated domain pack."""

    path: Path
    items: tuple[Item, ...]
    documents: tuple[Document, ...] = ()
    interactions: tuple[Interaction, ...] = ()
    users: tuple[User, ...] = ()

    def summary(self) -> dict[str, int]:
        """Count of records per file."""
        return {
            "items": len(self.items),
            "documents": len(self.documents),
            "interactions": len(self.interactions),
            "users": len(self.users),
        }


class _Problems:
    """Collects problems for one file, stopping at a cap so a broken file cannot flood the report.

    Each line's fields are all checked, so one pass reports everything wrong with a line; a field gets only its
    first problem (a missing field is not also "not a string").
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, where: str, fld: str, problem: str) -> None:
        if (where, fld) in self._seen:
            return
        self._seen.add((where, fld))
        if len(self.lines) < MAX_REPORTED_PROBLEMS:
            self.lines.append(f"{where}: {fld}: {problem}")


def _read_jsonl(path: Path, problems: _Problems) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, object)`` for each non-blank line that parses as a JSON object."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        problems.add(path.name, "-", f"cannot read file: {exc.strerror}")
        return
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path.name}:{lineno}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.add(where, "-", f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                problems.add(where, "-", f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, obj


def _read_parquet(path: Path, problems: _Problems) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, object)`` for each row of a Parquet file (null columns count as absent fields).

    Needs pyarrow (installed with ``candor[ray]``): large packs are the ones written as Parquet.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        problems.add(path.name, "-", "reading Parquet needs pyarrow (pip install 'candor[ray]')")
        return
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        problems.add(path.name, "-", f"cannot read file: {exc}")
        return
    row = 0
    for batch in table.to_batches(max_chunksize=65536):
        for obj in batch.to_pylist():
            row += 1
            attributes = obj.get("attributes")
            if isinstance(attributes, list):  # a Parquet map column reads as (key, value) pairs
                obj["attributes"] = dict(attributes)
            yield f"{path.name}:row {row}", {k: v for k, v in obj.items() if v is not None}


ITEM_FILES = ("items.jsonl", "items.parquet")


def items_file(root: Path) -> Path | None:
    """The pack's items file: ``items.jsonl``, else ``items.parquet`` (large catalogs), else ``None``."""
    for name in ITEM_FILES:
        if (root / name).is_file():
            return root / name
    return None


def _check_fields(where: str, obj: dict[str, Any], required: set[str], optional: set[str], problems: _Problems) -> bool:
    ok = True
    for name in sorted(required - obj.keys()):
        problems.add(where, name, "missing required field")
        ok = False
    for name in sorted(obj.keys() - required - optional):
        problems.add(where, name, "unknown field")
        ok = False
    return ok


def _text(
    where: str,
    obj: dict[str, Any],
    name: str,
    problems: _Problems,
    *,
    required: bool,
    max_len: int | None = None,
) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            problems.add(where, name, "must be a non-empty string")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        problems.add(where, name, "must be a non-empty string" if required else "must be a string or null")
        return None
    if max_len is not None and len(value) > max_len:
        problems.add(where, name, f"longer than {max_len} characters")
        return None
    return value


def _number(where: str, obj: dict[str, Any], name: str, problems: _Problems, *, minimum: float) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.add(where, name, "must be a finite number or null")
        return None
    if value < minimum:
        problems.add(where, name, f"must be >= {minimum:g}")
        return None
    return float(value)


def _parse_item(where: str, obj: dict[str, Any], problems: _Problems) -> Item | None:
    """Validate one item object; return it, or ``None`` after recording what is wrong."""
    fields_ok = _check_fields(
        where,
        obj,
        {"id", "title", "text", "category"},
        {"brand", "price", "attributes", "provider"},
        problems,
    )
    item_id = _text(where, obj, "id", problems, required=True, max_len=MAX_ID_CHARS)
    title = _text(where, obj, "title", problems, required=True)
    text = _text(where, obj, "text", problems, required=False)
    category = _text(where, obj, "category", problems, required=True)
    brand = _text(where, obj, "brand", problems, required=False)
    provider = _text(where, obj, "provider", problems, required=False)
    price = _number(where, obj, "price", problems, minimum=0.0)
    attributes = obj.get("attributes") or {}
    attrs_ok = isinstance(attributes, dict) and all(
        isinstance(v, str | int | float | bool) or v is None for v in attributes.values()
    )
    if not attrs_ok:
        problems.add(where, "attributes", "must be an object of scalar values")
    if not fields_ok or item_id is None or title is None or category is None or not attrs_ok:
        return None
    if obj.get("price") is not None and price is None:
        return None
    return Item(
        id=item_id,
        title=title,
        text=text or "",
        category=category,
        brand=brand or None,
        price=price,
        attributes=attributes,
        provider=provider or None,
    )


def _parse_document(where: str, obj: dict[str, Any], problems: _Problems) -> Document | None:
    fields_ok = _check_fields(where, obj, {"id", "title", "text"}, {"source"}, problems)
    doc_id = _text(where, obj, "id", problems, required=True, max_len=MAX_ID_CHARS)
    title = _text(where, obj, "title", problems, required=True)
    text = _text(where, obj, "text", problems, required=True)
    source = _text(where, obj, "source", problems, required=False)
    if not fields_ok or doc_id is None or title is None or text is None:
        return None
    return Document(id=doc_id, title=title, text=text, source=source)


def _timestamp(where: str, obj: dict[str, Any], problems: _Problems) -> float | None:
    value = obj.get("ts")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            problems.add(where, "ts", "must be a Unix time in seconds or an ISO 8601 string")
            return None
    return _number(where, obj, "ts", problems, minimum=0.0)


def _parse_interaction(
    where: str, obj: dict[str, Any], problems: _Problems, known_items: set[str]
) -> Interaction | None:
    fields_ok = _check_fields(where, obj, {"user_id", "item_id", "event"}, {"value", "ts"}, problems)
    user_id = _text(where, obj, "user_id", problems, required=True, max_len=MAX_ID_CHARS)
    item_id = _text(where, obj, "item_id", problems, required=True, max_len=MAX_ID_CHARS)
    event = obj.get("event")
    if event not in EVENT_TYPES:
        problems.add(where, "event", f"must be one of {', '.join(EVENT_TYPES)}")
        event = None
    value = _number(where, obj, "value", problems, minimum=0.0)
    ts = _timestamp(where, obj, problems)
    if item_id is not None and item_id not in known_items:
        problems.add(where, "item_id", f"unknown item {item_id!r}")
        return None
    if not fields_ok or user_id is None or item_id is None or event is None:
        return None
    return Interaction(
        user_id=user_id, item_id=item_id, event=event, value=1.0 if value is None else value, ts=ts or 0.0
    )


def _parse_user(where: str, obj: dict[str, Any], problems: _Problems) -> User | None:
    user_id = _text(where, obj, "user_id", problems, required=True, max_len=MAX_ID_CHARS)
    attributes: dict[str, str] = {}
    for key, value in obj.items():
        if key == "user_id":
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.add(where, key, "group attributes must be strings or numbers")
            continue
        attributes[key] = str(value)
    return None if user_id is None else User(user_id=user_id, attributes=attributes)


def _load_file(
    path: Path,
    parse: Callable[[str, dict[str, Any], _Problems], _T | None],
    key: Callable[[_T], str],
    problems: _Problems,
    *,
    unique: bool,
) -> list[_T]:
    records: list[_T] = []
    first_seen: dict[str, str] = {}
    rows = _read_parquet(path, problems) if path.suffix == ".parquet" else _read_jsonl(path, problems)
    for where, obj in rows:
        record = parse(where, obj, problems)
        if record is None:
            continue
        if unique:
            ident = key(record)
            if ident in first_seen:
                problems.add(where, "id", f"duplicate id {ident!r} (first at {first_seen[ident]})")
                continue
            first_seen[ident] = where
        records.append(record)
    return records


def load_pack(path: str | Path) -> DomainPack:
    """Load and validate a domain pack folder.

    Args:
        path: Folder with ``items.jsonl`` (or ``items.parquet``, same fields) and optionally ``documents.jsonl``,
            ``interactions.jsonl`` and ``users.jsonl``.

    Returns:
        The validated pack.

    Raises:
        PackValidationError: If any file is malformed; every problem found is listed.
    """
    root = Path(path)
    problems = _Problems()
    source = items_file(root)
    if source is None:
        raise PackValidationError([f"{root}: items.jsonl: missing (a domain pack needs at least its items)"])
    items = _load_file(source, _parse_item, lambda i: i.id, problems, unique=True)
    documents: list[Document] = []
    if (root / "documents.jsonl").is_file():
        documents = _load_file(root / "documents.jsonl", _parse_document, lambda d: d.id, problems, unique=True)
    users: list[User] = []
    if (root / "users.jsonl").is_file():
        users = _load_file(root / "users.jsonl", _parse_user, lambda u: u.user_id, problems, unique=True)
    interactions: list[Interaction] = []
    if (root / "interactions.jsonl").is_file():
        known = {item.id for item in items}
        interactions = _load_file(
            root / "interactions.jsonl",
            lambda where, obj, p: _parse_interaction(where, obj, p, known),
            lambda i: i.item_id,
            problems,
            unique=False,
        )
    if not items and not problems.lines:
        problems.add(source.name, "-", "no items")
    if problems.lines:
        raise PackValidationError(problems.lines)
    return DomainPack(
        path=root,
        items=tuple(items),
        documents=tuple(documents),
        interactions=tuple(interactions),
        users=tuple(users),
    )
