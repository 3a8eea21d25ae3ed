"""The demo pack converter: the shipped pack is exactly what the converter makes of the shared CSV."""

from __future__ import annotations

import csv
import filecmp
from pathlib import Path

import pytest

from retrieval.flipkart import build_demo_pack, convert_row, synthesize_shoppers
from tests.conftest import DEMO_PACK, FLIPKART_CSV

ROW = {
    "pid": "WATX1",
    "product_name": "Maserati Time R8851116001 Analog Watch",
    "product_category_tree": '["Watches >> Wrist Watches >> Maserati Time Wrist Watches"]',
    "retail_price": "24400.0",
    "discounted_price": "24400.0",
    "description": "An analog watch.",
    "brand": "",
    "product_specifications": '{"product_specification"=>[{"key"=>"Strap Material", "value"=>"Leather"}]}',
}


def test_row_conversion_derives_category_and_brand() -> None:
    item = convert_row(ROW)
    assert item.category == "Watches > Wrist Watches"
    assert item.brand == "Maserati Time"
    assert item.provider == "Maserati Time"
    assert item.price == 24400.0
    assert item.attributes["Strap Material"] == "Leather"
    assert "Strap Material: Leather" in item.text


def test_unparseable_specifications_are_ignored() -> None:
    item = convert_row({**ROW, "product_specifications": '{"product_specification"=>nil}', "brand": "Acme"})
    assert item.brand == "Acme"
    assert "Strap Material" not in item.attributes


def test_synthetic_shoppers_are_reproducible() -> None:
    items = [convert_row({**ROW, "pid": f"W{i}"}) for i in range(10)]
    assert synthesize_shoppers(items, n_users=5, seed=1) == synthesize_shoppers(items, n_users=5, seed=1)


@pytest.mark.skipif(not FLIPKART_CSV.is_file(), reason=f"shared dataset not present at {FLIPKART_CSV}")
def test_shipped_pack_matches_a_fresh_conversion(tmp_path: Path) -> None:
    counts = build_demo_pack(FLIPKART_CSV, tmp_path)
    assert counts["items"] == 1050
    with FLIPKART_CSV.open(encoding="utf-8", newline="") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == 1050
    for name in ("items.jsonl", "interactions.jsonl", "users.jsonl"):
        assert filecmp.cmp(tmp_path / name, DEMO_PACK / name, shallow=False), name
