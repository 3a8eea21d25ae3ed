"""Convert the Flipkart e-commerce sample (CSV) into a Candor domain pack, plus clearly synthetic shoppers.

The demo pack in ``data/demo`` is produced by ``candor pack import-flipkart``; running it again on the same CSV
gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from retrieval.types import CATEGORY_SEPARATOR, Item

MAX_TEXT_CHARS = 4000
MAX_CATEGORY_LEVELS = 3
SYNTHETIC_EPOCH = 1_462_060_800  # 2016-05-01T00:00:00Z, just after the catalog was crawled
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("female", "male", "unspecified")


def _parse_specs(raw: str) -> list[tuple[str, str]]:
    """Parse the Ruby-hash-like specification column into ``(key, value)`` pairs."""
    if not raw or "=>" not in raw:
        return []
    try:
        data = json.loads(raw.replace("=>", ":").replace(":nil", ":null"))
    except json.JSONDecodeError:
        return []
    specs = data.get("product_specification") if isinstance(data, dict) else None
    if isinstance(specs, dict):
        specs = [specs]
    pairs: list[tuple[str, str]] = []
    for entry in specs or []:
        if isinstance(entry, dict) and entry.get("key") and entry.get("value") is not None:
            pairs.append((str(entry["key"]).strip(), str(entry["value"]).strip()))
    return pairs


def _category_and_brand(tree: str, title: str, known_brand: str | None) -> tuple[str, str | None]:
    """Return the generic category path and, where a level names one, the brand.

    Flipkart trees run from generic levels to brand-specific ones ("Wrist Watches" then
    "Titan Wrist Watches") and end with the truncated product name. The generic prefix is the category. A level
    is brand-specific when it starts with the known brand, or, when the brand is unknown, when it repeats its
    parent's name below the second level (its prefix is then taken as the brand).
    """
    try:
        paths = json.loads(tree)
        path = str(paths[0]) if isinstance(paths, list) and paths else tree
    except json.JSONDecodeError:
        path = tree
    levels = [lv.strip() for lv in path.split(">>") if lv.strip()]
    generic: list[str] = []
    brand: str | None = None
    for level in levels:
        if level.endswith("...") or level.casefold() == title.casefold():
            break
        if known_brand and generic and level.casefold().startswith(known_brand.casefold() + " "):
            break
        parent = generic[-1] if generic else ""
        if not known_brand and len(generic) >= 2 and level.endswith(" " + parent):
            brand = level[: -len(parent)].strip() or None
            break
        generic.append(level)
    return CATEGORY_SEPARATOR.join(generic[:MAX_CATEGORY_LEVELS] or levels[:1]), brand


def _price(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def convert_row(row: dict[str, str]) -> Item:
    """Convert one CSV row into an :class:`~retrieval.types.Item`."""
    title = re.sub(r"\s+", " ", row["product_name"]).strip()
    specs = _parse_specs(row.get("product_specifications", ""))
    spec_brand = next((v for k, v in specs if k.casefold() == "brand"), None)
    known_brand = (row.get("brand") or "").strip() or spec_brand
    category, tree_brand = _category_and_brand(row.get("product_category_tree", ""), title, known_brand)
    brand = known_brand or tree_brand
    description = re.sub(r"\s+", " ", row.get("description", "")).strip()
    spec_text = "; ".join(f"{k}: {v}" for k, v in specs)
    text = description + (f" Specifications: {spec_text}." if spec_text else "")
    attributes: dict[str, Any] = {}
    for key, value in specs:
        attributes.setdefault(key, value)
    retail = _price(row.get("retail_price", ""))
    if retail is not None:
        attributes["retail_price"] = retail
    attributes["currency"] = "INR"
    price = _price(row.get("discounted_price", "")) or retail
    return Item(
        id=row["pid"].strip(),
        title=title,
        text=text[:MAX_TEXT_CHARS],
        category=category,
        brand=brand,
        price=price,
        attributes=attributes,
        provider=brand,
    )


def read_flipkart_csv(path: str | Path) -> list[Item]:
    """Read every product of the Flipkart sample CSV, in file order.

    Args:
        path: The CSV file (multi-line quoted fields are handled).

    Returns:
        One item per row.
    """
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return [convert_row(row) for row in csv.DictReader(handle)]


def synthesize_shoppers(
    items: Sequence[Item], *, n_users: int = 200, seed: int = 7
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Make up shoppers and their browsing, for demos and tests only.

    Each synthetic user has one or two interest categories (second-level paths) and a sequence of views, with
    some carts and purchases, inside them; group attributes are drawn independently of behaviour. Nothing here
    describes real people.

    Args:
        items: The catalog.
        n_users: How many shoppers to make.
        seed: Random seed; the same inputs give the same output.

    Returns:
        ``(interactions, users)`` as JSON-ready dicts.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible demo data, not security
    by_category: dict[str, list[str]] = defaultdict(list)
    for item in items:
        levels = item.category.split(CATEGORY_SEPARATOR)
        by_category[CATEGORY_SEPARATOR.join(levels[:2])].append(item.id)
    categories = sorted(c for c, ids in by_category.items() if len(ids) >= 5)
    interactions: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    for n in range(n_users):
        user_id = f"u{n:04d}"
        users.append(
            {
                "user_id": user_id,
                "age_band": rng.choice(AGE_BANDS),
                "gender": rng.choice(GENDERS),
            }
        )
        if not categories:
            continue
        interests = rng.sample(categories, k=min(len(categories), rng.choice((1, 1, 2))))
        ts = SYNTHETIC_EPOCH + rng.randrange(0, 60 * 86_400)
        for _ in range(rng.randint(4, 16)):
            item_id = rng.choice(by_category[rng.choice(interests)])
            ts += rng.randrange(60, 3 * 86_400)
            event = rng.choices(("view", "cart", "purchase"), weights=(0.8, 0.13, 0.07))[0]
            interactions.append({"user_id": user_id, "item_id": item_id, "event": event, "value": 1.0, "ts": ts})
    return interactions, users


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines (UTF-8, sorted keys for stable diffs) and return how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def build_demo_pack(csv_path: str | Path, out_dir: str | Path, *, n_users: int = 200, seed: int = 7) -> dict[str, int]:
    """Write ``items.jsonl``, synthetic ``interactions.jsonl`` and ``users.jsonl`` into ``out_dir``.

    Args:
        csv_path: The Flipkart sample CSV.
        out_dir: Destination folder (created if missing); existing files of the same names are replaced.
        n_users: Number of synthetic shoppers.
        seed: Random seed for the synthetic shoppers.

    Returns:
        Number of records written per file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = read_flipkart_csv(csv_path)
    interactions, users = synthesize_shoppers(items, n_users=n_users, seed=seed)
    return {
        "items": write_jsonl(out / "items.jsonl", (item.to_dict() for item in items)),
        "interactions": write_jsonl(out / "interactions.jsonl", interactions),
        "users": write_jsonl(out / "users.jsonl", users),
    }
