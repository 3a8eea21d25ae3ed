"""Domain packs written as Parquet (``items.parquet``) load like their JSON Lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.errors import PackValidationError
from retrieval.pack import load_pack
from tests.conftest import DEMO_PACK


def test_parquet_pack_reads_like_its_json_lines(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet packs need pyarrow (pip install 'candor[ray]')")
    import pyarrow.parquet as pq

    pack = tmp_path / "pack"
    pack.mkdir()
    items = load_pack(DEMO_PACK).items[:25]
    rows = [item.to_dict() for item in items]
    for row in rows:  # Parquet wants one type per column: the demo's attributes vary by item
        row["attributes"] = [(key, str(value)) for key, value in row["attributes"].items()]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("title", pa.string()),
                ("text", pa.string()),
                ("category", pa.string()),
                ("brand", pa.string()),
                ("price", pa.float64()),
                ("attributes", pa.map_(pa.string(), pa.string())),
                ("provider", pa.string()),
            ]
        ),
    )
    pq.write_table(table, pack / "items.parquet")
    loaded = load_pack(pack).items
    assert [i.embedding_text() for i in loaded] == [i.embedding_text() for i in items]
    assert [i.id for i in loaded] == [i.id for i in items]


def test_parquet_rows_are_validated_with_their_row_number(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet packs need pyarrow (pip install 'candor[ray]')")
    import pyarrow.parquet as pq

    rows = [
        {"id": "a", "title": "A", "text": "x", "category": "C"},
        {"id": "b", "title": "", "text": "y", "category": "C"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "items.parquet")
    with pytest.raises(PackValidationError) as caught:
        load_pack(tmp_path)
    assert caught.value.problems == ["items.parquet:row 2: title: must be a non-empty string"]
