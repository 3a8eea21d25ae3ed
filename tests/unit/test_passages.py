"""Which passages a question reads: documents keep their reserved places among items."""

from __future__ import annotations

from retrieval.answers import ContextPassage
from retrieval.passages import item_passage_text, reserve_documents, reserved_order
from retrieval.types import Item


def doc(name: str, score: float) -> ContextPassage:
    return ContextPassage(name, f"{name}#0", name, "text", score, "document")


def item(name: str, score: float) -> ContextPassage:
    return ContextPassage(name, f"{name}#0", name, "text", score, "item")


DOCS = [doc("d1", 0.40), doc("d2", 0.30), doc("d3", 0.20)]
ITEMS = [item(f"i{n}", 0.60 - n / 100) for n in range(8)]


def ids(passages: list[ContextPassage]) -> list[str]:
    return [p.doc_id for p in passages]


def test_the_best_documents_replace_the_weakest_items() -> None:
    picked = reserve_documents(DOCS, ITEMS, 4, 0, 2)
    assert ids(picked) == ["i0", "i1", "d1", "d2"]


def test_spare_passages_follow_the_first_k_best_first() -> None:
    picked = reserve_documents(DOCS, ITEMS, 4, 3, 2)
    assert ids(picked) == ["i0", "i1", "d1", "d2", "i2", "i3", "i4"]


def test_no_reserve_is_plain_score_order() -> None:
    assert ids(reserve_documents(DOCS, ITEMS, 4, 1, 0)) == ["i0", "i1", "i2", "i3", "i4"]


def test_documents_that_score_well_take_no_extra_places() -> None:
    strong = [doc("d1", 0.9), doc("d2", 0.8), doc("d3", 0.7)]
    assert ids(reserve_documents(strong, ITEMS, 4, 0, 2)) == ["d1", "d2", "d3", "i0"]


def test_fewer_documents_than_reserved_and_a_small_k() -> None:
    assert ids(reserve_documents(DOCS[:1], ITEMS, 4, 0, 2)) == ["i0", "i1", "i2", "d1"]
    assert ids(reserve_documents(DOCS, ITEMS, 1, 0, 2)) == ["d1"]
    assert ids(reserve_documents([], ITEMS[:2], 4, 2, 2)) == ["i0", "i1"]


def test_reserved_order_works_on_positions_of_any_ranking() -> None:
    # What the evaluation suite uses on its own passages: item, item, document, item, document (best first).
    ranking = [False, False, True, False, True]
    assert reserved_order(ranking, 3, 0, 2) == [0, 2, 4]
    assert reserved_order(ranking, 3, 2, 0) == [0, 1, 2, 3, 4]
    assert reserved_order(ranking, 2, 1, 1) == [0, 2, 1]


def test_item_text_is_cut_at_a_word_boundary() -> None:
    shirt = Item(id="s1", title="Shirt", text="A soft cotton shirt with long sleeves", category="Clothing")
    full = shirt.embedding_text()
    assert item_passage_text(shirt, 1000) == full
    cut = item_passage_text(shirt, 20)
    assert len(cut) <= 20
    assert full.startswith(cut)
    assert full[len(cut)] == " "
