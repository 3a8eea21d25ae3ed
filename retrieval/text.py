"""Text normalisation shared by search explanations, grounding checks and rule-derived judgments.

One tokeniser, one stop-word list and one plural-folding rule, so "towels" matches "towel" the same way
wherever two texts are compared.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")

STOPWORDS = frozenset(
    """
    a about again all also am an and any are as at be been being both but by can could did do does doing down each
    for from had has have having he here how i if in into is it its just may me might more most must my no nor not
    of off on only or other our out over own per s same shall she should so some such t than that the their them
    then there these they this those to too under up very via was we were what when where which who whom whose why
    will with would you your
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits; an apostrophe joins its word: ``can't`` -> ``cant``)."""
    return _WORD.findall(text.casefold().replace("'", "").replace("\u2019", ""))


def stem(word: str) -> str:
    """Fold an English plural to its singular, crudely: ``batteries`` -> ``battery``, ``boxes`` -> ``box``."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def stems(text: str) -> list[str]:
    """Every word of ``text``, stemmed, in order (stop words kept: phrases must still match word for word)."""
    return [stem(w) for w in words(text)]


def content_terms(text: str) -> list[str]:
    """The words of ``text`` that carry content (stop words dropped), duplicates removed, in order."""
    seen: dict[str, None] = {}
    for word in words(text):
        if word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def content_stems(text: str) -> list[str]:
    """:func:`stems` without stop words (duplicates kept: a share of an answer's words counts each)."""
    return [stem(w) for w in words(text) if w not in STOPWORDS]
