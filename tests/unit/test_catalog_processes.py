"""Two processes on one catalog file (two connections here): ids, sequence and changes stay one story."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.fleet import MODELS, FleetSignals
from retrieval.catalog import ItemCatalog
from tests.unit.test_index_and_catalog import DIM, item, unit_vectors


def test_writes_through_two_connections_get_distinct_ids_and_one_sequence(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    a, b = ItemCatalog(path, DIM), ItemCatalog(path, DIM)
    a_ids, _ = a.upsert([item(0), item(1)], unit_vectors(2), "enc")
    b_ids, _ = b.upsert([item(2)], unit_vectors(1, seed=3), "enc")
    assert not set(a_ids) & set(b_ids)
    # b wrote after a's two changes it had not seen: its view has a gap, so its sequence stays until it catches up.
    assert b.seq == 0
    changes = b.changes()
    assert changes is not None
    assert changes.seq == 3
    assert sorted(i.id for i, _, _ in changes.written) == ["i0", "i1", "i2"]
    b.catch_up(changes)
    assert b.seq == 3
    assert sorted(i.id for i in b.items()) == ["i0", "i1", "i2"]
    assert b.changes() is None  # nothing new: one pragma, no rows read


def test_replaced_and_deleted_vectors_reach_the_other_connection(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    a = ItemCatalog(path, DIM)
    ids, _ = a.upsert([item(0), item(1)], unit_vectors(2), "enc")
    b = ItemCatalog(path, DIM)
    new_ids, replaced = a.upsert([item(0, title="Renamed")], unit_vectors(1, seed=9), "enc")
    assert replaced == [ids[0]]
    assert a.delete("i1") == ids[1]
    changes = b.changes()
    assert changes is not None
    assert sorted(changes.removed) == sorted([ids[0], ids[1]])
    [(written, fid, vector)] = changes.written
    assert (written.title, fid) == ("Renamed", new_ids[0])
    assert np.allclose(vector, unit_vectors(1, seed=9)[0])
    b.catch_up(changes)
    assert [i.id for i in b.items()] == ["i0"]
    assert b.get("i0").title == "Renamed"  # type: ignore[union-attr]
    assert b.item_for_faiss_id(ids[0]) is None
    # A delete through b of an item a already deleted is a miss, not an error.
    assert b.delete("i1") is None
    # A rebuild says so to the others.
    generation = a.bump_index_generation()
    later = b.changes()
    assert later is not None
    assert later.index_generation == generation


def test_fleet_counter_is_shared(tmp_path: Path) -> None:
    one, two = FleetSignals(tmp_path / "fleet.sqlite"), FleetSignals(tmp_path / "fleet.sqlite")
    assert one.read(MODELS) == 0
    assert two.bump(MODELS) == 1
    assert one.read(MODELS) == 1
    one.close()
    two.close()
