"""Personal data redaction for audit records: e-mail addresses, phone numbers, card numbers and given names.

The chained record keeps the redacted request; what was taken out goes to a separate, erasable table keyed by the
record id, so erasing it later does not touch any hashed content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13 to 19 digits, optionally grouped by single spaces or dashes (card numbers); checked with Luhn.
CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")
# An optional +country code, then 7 to 15 digits in groups separated by spaces, dots, dashes or parentheses.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])")
# What both number patterns need somewhere: two digits, side by side or one space or dash apart.
DIGIT_PAIR = re.compile(r"\d[ -]?\d")
MIN_PHONE_DIGITS = 7
MAX_PHONE_DIGITS = 15


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(slots=True)
class Redactor:
    """Replaces personal data in strings, remembering what it removed.

    Args:
        names: Names to remove wherever they appear (from ``context.user``), matched case-insensitively.
    """

    names: tuple[str, ...] = ()
    found: list[dict[str, str]] = field(default_factory=list)
    _name_patterns: list[re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._name_patterns = [re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE) for name in self.names]

    def _take(self, kind: str, path: str, value: str) -> str:
        self.found.append({"kind": kind, "path": path, "value": value})
        return f"[{kind}]"

    def text(self, value: str, path: str) -> str:
        """Redact one string found at ``path``."""
        out = value
        # Every record runs each of its strings through here (titles, categories, passages): skip the patterns
        # that cannot match, since an address needs an "@" and a card or phone number a pair of digits.
        if "@" in out:
            out = EMAIL.sub(lambda m: self._take("email", path, m.group()), out)
        if DIGIT_PAIR.search(out):

            def card(m: re.Match[str]) -> str:
                digits = re.sub(r"\D", "", m.group())
                ok = 13 <= len(digits) <= 19 and luhn_ok(digits)
                return self._take("card", path, m.group()) if ok else m.group()

            out = CARD.sub(card, out)

            def phone(m: re.Match[str]) -> str:
                digits = re.sub(r"\D", "", m.group())
                plausible = MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS and (
                    m.group().startswith(("+", "(")) or re.search(r"[ .()-]", m.group()) or len(digits) >= 10
                )
                return self._take("phone", path, m.group()) if plausible else m.group()

            out = PHONE.sub(phone, out)
        for pattern in self._name_patterns:
            out = pattern.sub(lambda m: self._take("name", path, m.group()), out)
        return out

    def value(self, value: Any, path: str = "") -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self.text(value, path)
        if isinstance(value, dict):
            return {k: self.value(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value


def user_names(request: Any) -> tuple[str, ...]:
    """Names given in the request's optional ``context.user`` (a string, or an object with ``name``)."""
    context = request.get("context") if isinstance(request, dict) else None
    user = context.get("user") if isinstance(context, dict) else None
    raw: Iterable[Any]
    if isinstance(user, str):
        raw = [user]
    elif isinstance(user, dict):
        raw = [user.get("name"), user.get("first_name"), user.get("last_name")]
    else:
        raw = []
    names = {n.strip() for n in raw if isinstance(n, str) and n.strip()}
    # Whole names first, then their parts of three letters or more ("Ada Lovelace" also hides "Lovelace").
    parts = {p for n in names for p in n.split() if len(p) >= 3}
    return tuple(sorted(names, key=len, reverse=True)) + tuple(sorted(parts - names, key=len, reverse=True))


def redact_free_text(text: str, path: str, names: Iterable[str] = ()) -> tuple[str, list[dict[str, str]]]:
    """Redact text a person wrote outside a request (a reviewer's note, a reason), as requests are redacted.

    Args:
        text: The text.
        path: Where it sits in the record (named in what was removed).
        names: Names to remove as well (e.g. those taken out of the record the note is about).

    Returns:
        The redacted text, and what was removed.
    """
    redactor = Redactor(names=tuple(sorted(set(names), key=len, reverse=True)))
    return redactor.text(text, path), redactor.found


def names_found(found: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The names a redaction took out (from its ``found`` list), to redact them from what follows as well."""
    return tuple(sorted({str(f["value"]) for f in found if f.get("kind") == "name" and f.get("value")}))


def redact_request(request: Any) -> tuple[Any, list[dict[str, str]]]:
    """Redact a request body.

    Args:
        request: The JSON-like request body.

    Returns:
        The redacted body, and what was removed (kind, path, original value) for the erasable table.
    """
    redactor = Redactor(names=user_names(request))
    return redactor.value(request), redactor.found
