"""Domain pack validation reports file:line: field: problem for every bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.errors import PackValidationError
from retrieval.pack import load_pack

GOOD_ITEM = {"id": "a", "title": "Towel", "text": "soft", "category": "Home > Bath", "price": 10.0}


def write(path: Path, rows: list[object]) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(PackValidationError) as caught:
        load_pack(folder)
    return caught.value.problems


def test_valid_pack_loads_every_file(tmp_path: Path) -> None:
    write(tmp_path / "items.jsonl", [GOOD_ITEM, {**GOOD_ITEM, "id": "b", "brand": "Acme", "attributes": {"GSM": 500}}])
    write(tmp_path / "documents.jsonl", [{"id": "d1", "title": "Returns", "text": "30 days."}])
    write(
        tmp_path / "interactions.jsonl",
        [{"user_id": "u1", "item_id": "a", "event": "view", "ts": "2024-01-02T03:04:05Z"}],
    )
    write(tmp_path / "users.jsonl", [{"user_id": "u1", "age_band": "25-34"}])
    pack = load_pack(tmp_path)
    assert pack.summary() == {"items": 2, "documents": 1, "interactions": 1, "users": 1}
    assert pack.items[1].attributes == {"GSM": 500}
    assert pack.interactions[0].ts == pytest.approx(1704164645.0)
    assert pack.users[0].attributes == {"age_band": "25-34"}


def test_each_bad_line_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    write(
        tmp_path / "items.jsonl",
        [
            GOOD_ITEM,
            {**GOOD_ITEM, "id": "b", "price": "cheap"},
            "{not json",
            {**GOOD_ITEM, "id": "a"},
            {"id": "c", "title": "", "category": "X", "text": ""},
            {**GOOD_ITEM, "id": "d", "colour": "red"},
            [1, 2],
        ],
    )
    problems = problems_of(tmp_path)
    assert "items.jsonl:2: price: must be a finite number or null" in problems
    assert any(p.startswith("items.jsonl:3: -: invalid JSON") for p in problems)
    assert "items.jsonl:4: id: duplicate id 'a' (first at items.jsonl:1)" in problems
    assert "items.jsonl:5: title: must be a non-empty string" in problems
    assert "items.jsonl:6: colour: unknown field" in problems
    assert "items.jsonl:7: -: expected a JSON object, got list" in problems


def test_missing_fields_and_negative_price(tmp_path: Path) -> None:
    write(tmp_path / "items.jsonl", [{"id": "a", "title": "T", "text": ""}, {**GOOD_ITEM, "price": -1}])
    problems = problems_of(tmp_path)
    assert "items.jsonl:1: category: missing required field" in problems
    assert "items.jsonl:2: price: must be >= 0" in problems


def test_every_problem_of_a_line_is_reported_once(tmp_path: Path) -> None:
    write(tmp_path / "items.jsonl", [{"id": "a", "title": "", "price": -1, "colour": "red"}])
    write(tmp_path / "interactions.jsonl", [{"user_id": "u", "item_id": "a", "value": "x"}])
    problems = problems_of(tmp_path)
    item_problems = [p for p in problems if p.startswith("items.jsonl:1:")]
    assert sorted(item_problems) == [
        "items.jsonl:1: category: missing required field",
        "items.jsonl:1: colour: unknown field",
        "items.jsonl:1: price: must be >= 0",
        "items.jsonl:1: text: missing required field",
        "items.jsonl:1: title: must be a non-empty string",
    ]
    assert "interactions.jsonl:1: event: missing required field" in problems
    assert "interactions.jsonl:1: value: must be a finite number or null" in problems
    assert not any("event: must be one of" in p for p in problems)  # the missing field is reported once


def test_interactions_must_reference_known_items_and_events(tmp_path: Path) -> None:
    write(tmp_path / "items.jsonl", [GOOD_ITEM])
    write(
        tmp_path / "interactions.jsonl",
        [{"user_id": "u", "item_id": "zzz", "event": "view"}, {"user_id": "u", "item_id": "a", "event": "like"}],
    )
    problems = problems_of(tmp_path)
    assert "interactions.jsonl:1: item_id: unknown item 'zzz'" in problems
    assert "interactions.jsonl:2: event: must be one of view, cart, purchase, rating" in problems


def test_missing_items_file_is_named(tmp_path: Path) -> None:
    problems = problems_of(tmp_path)
    assert "items.jsonl: missing" in problems[0]


def test_shipped_demo_pack_is_valid() -> None:
    pack = load_pack(Path(__file__).resolve().parents[2] / "data" / "demo")
    assert len(pack.items) == 1050
    assert len({item.id for item in pack.items}) == 1050
    assert pack.interactions
    assert pack.users
