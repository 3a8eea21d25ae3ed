"""Plain value types shared by the retrieval core, the service and governance.

These are frozen dataclasses with no behaviour that needs torch or faiss, so other packages can import them
cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CATEGORY_SEPARATOR = " > "

EventType = Literal["view", "cart", "purchase", "rating"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "cart", "purchase", "rating")


def split_category(path: str) -> list[str]:
    """Split a category path such as ``"Baby Care > Baby Bath & Skin"`` into its levels.

    Args:
        path: The path; levels are separated by ``>``.

    Returns:
        The stripped, non-empty levels, in order.
    """
    return [part.strip() for part in path.split(">") if part.strip()]


def item_embedding_text(title: str, category: str, brand: str | None, text: str | None) -> str:
    """Text the encoder sees for an item: title first, so truncation keeps what matters most.

    A function of the four fields rather than only an :class:`Item` method, so bulk embedding (Ray Data, which
    reads the pack's rows as columns) builds exactly the text the local path does.
    """
    parts = [title, category.replace(CATEGORY_SEPARATOR, ", ")]
    if brand:
        parts.append(f"Brand: {brand}")
    parts.append(text or "")
    return ". ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item as a domain pack or the admin API describes it.

    Attributes:
        id: Stable identifier chosen by the shop.
        title: Display name.
        text: Free text (description, specifications) used for embedding and answers.
        category: Category path, levels separated by ``" > "``.
        brand: Brand name, if known.
        price: Selling price in the shop's currency, if known.
        attributes: Extra structured facts (specifications); values are JSON scalars.
        provider: Seller or brand group, used for exposure-fairness audits.
    """

    id: str
    title: str
    text: str
    category: str
    brand: str | None = None
    price: float | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    provider: str | None = None

    def embedding_text(self) -> str:
        """Text the encoder sees for this item (see :func:`item_embedding_text`)."""
        return item_embedding_text(self.title, self.category, self.brand, self.text)

    def to_dict(self) -> dict[str, Any]:
        """Return the item as a JSON-ready dict (the domain-pack line format)."""
        return {
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "attributes": dict(self.attributes),
            "provider": self.provider,
        }


@dataclass(frozen=True, slots=True)
class Interaction:
    """One recorded event of a user with an item."""

    user_id: str
    item_id: str
    event: EventType
    value: float
    ts: float


@dataclass(frozen=True, slots=True)
class Filters:
    """Constraints every returned item must satisfy.

    ``category`` matches a path prefix level by level, case-insensitively ("Baby Care" matches
    "Baby Care > Baby Bath & Skin"); ``brand`` matches exactly, case-insensitively. Items without a price
    never pass a price bound.
    """

    category: str | None = None
    brand: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    @property
    def active(self) -> bool:
        """Whether any constraint is set."""
        return any(v is not None for v in (self.category, self.brand, self.price_min, self.price_max))

    def matches(self, item: Item) -> bool:
        """Return whether ``item`` satisfies every set constraint."""
        if self.category is not None:
            want = [p.casefold() for p in split_category(self.category)]
            have = [p.casefold() for p in split_category(item.category)]
            if have[: len(want)] != want:
                return False
        if self.brand is not None and (item.brand or "").casefold() != self.brand.casefold():
            return False
        if self.price_min is not None and (item.price is None or item.price < self.price_min):
            return False
        return not (self.price_max is not None and (item.price is None or item.price > self.price_max))


@dataclass(frozen=True, slots=True)
class Contribution:
    """One reason behind a result.

    Attributes:
        source: A history item id, the seed item id, or an item field name (``title``, ``category``, ...).
        score: For history items, the share of the result's score this item explains (the shares sum to the
            score); for fields, the fraction of query terms the field contains; for a seed item, its cosine
            similarity to the result.
        matched_terms: Query terms found in the field, for field contributions.
    """

    source: str
    score: float
    matched_terms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an item was returned, in a form both people and audits can read.

    Attributes:
        method: How the explanation was computed (``history-similarity-decomposition``,
            ``query-field-match`` or ``item-similarity``).
        summary: One sentence for a person.
        contributions: The reasons, strongest first.
    """

    method: str
    summary: str
    contributions: tuple[Contribution, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """An item chosen for a response, with its score and explanation."""

    item: Item
    score: float
    explanation: Explanation


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """An item a shopper interacted with and how much it should count."""

    item_id: str
    weight: float = 1.0
