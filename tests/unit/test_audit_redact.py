"""Redaction of personal data from audited requests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re

from governance.audit.chain import canonical_json
from governance.audit.records import AuditEvent, event_record, model_change_record
from governance.audit.redact import CARD, EMAIL, PHONE, Redactor, luhn_ok, redact_request
from governance.audit.reviews import review_record
from governance.audit.store import Stored


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("5500005555555559")
    assert not luhn_ok("4111111111111112")


def test_emails_phones_cards_and_names_are_removed() -> None:
    request = {
        "query": "towels for ada LOVELACE, ada.l@example.co.uk, +1 (555) 123-4567, 4111-1111-1111-1111",
        "context": {"user": "Ada Lovelace"},
        "k": 5,
    }
    redacted, found = redact_request(request)
    assert redacted["query"] == "towels for [name], [email], [phone], [card]"
    assert redacted["context"] == {"user": "[name]"}
    assert redacted["k"] == 5
    assert {f["kind"] for f in found} == {"name", "email", "phone", "card"}
    assert {f["path"] for f in found} == {"query", "context.user"}


def test_ordinary_numbers_are_kept() -> None:
    text = "towel 1200 rupees size 40 pack of 2 model 4111111111111112 year 2024 ean 12345678"
    redacted, found = redact_request({"query": text})
    assert redacted["query"] == text
    assert found == []


def test_name_parts_in_other_fields_and_objects() -> None:
    redacted, _ = redact_request(
        {"history": ["Lovelace special"], "context": {"user": {"name": "Ada Lovelace", "email": "x@y.io"}}}
    )
    assert redacted["history"] == ["[name] special"]
    assert redacted["context"]["user"] == {"name": "[name]", "email": "[email]"}


def test_canonical_json_is_order_independent() -> None:
    a = {"b": 1, "a": [1, 2, {"z": "é", "y": None}]}
    b = {"a": [1, 2, {"y": None, "z": "é"}], "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":[1,2,{"y":null,"z":"é"}],"b":1}'.encode()


def python_canonical(value: object) -> bytes:
    """The definition canonical JSON must match byte for byte."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def test_canonical_json_is_byte_for_byte_the_json_module_s() -> None:
    rng = random.Random(5)
    floats = [0.0, -0.0, 1.0, 0.1, 1 / 3, 1e-4, 9.99e-5, 1e-5, 1e15, 1e16, 1.2345678901234567e16, 5e-324, 1e308]
    floats += [rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 22) for _ in range(3000)]
    floats += [round(rng.uniform(-1000, 1000), rng.randint(0, 7)) for _ in range(3000)]
    text = "".join(chr(c) for c in range(0x250)) + '\u2028\u2029\ufeff\U0001f600 "quoted" back\\slash'
    values: list[object] = [
        {"scores": floats, "text": text, "n": [0, -1, 2**63 - 1, -(2**63)], "flags": [True, False, None]},
        {"nested": {"z": {"b": [1, {"y": 2.5, "x": "é"}]}, "a": ()}, "": "empty key", "B": 1, "a": 2, "é": 3},
        [2**64, 10**30, 1.5],  # past msgspec's integers: the json module writes them
        {"hash": "sha256:1e5f", "title": "Rs. 1e6, 0.00001 off"},  # number-like strings
    ]
    values += [{"v": f} for f in floats]
    values += [1e16, -2.5e-7, 1.5e300]  # a float as the whole document
    for value in values:
        assert canonical_json(value) == python_canonical(value), value


def test_canonical_json_writes_nan_and_infinity_as_null() -> None:
    body = {"score": float("nan"), "hi": float("inf"), "lo": [float("-inf"), 1e-7]}
    assert canonical_json(body) == b'{"hi":null,"lo":[null,1e-07],"score":null}'
    assert canonical_json({"score": float("nan")}) == b'{"score":null}'


def test_long_generated_text_is_chained_as_an_excerpt_with_its_hash() -> None:
    answer = "Refunds take five days. " * 1000
    event = AuditEvent(
        endpoint="/v1/answers",
        request={"question": "refunds?"},
        output={"answer": answer, "citations": [{"text": "short"}]},
        explanation={"sentences": [answer]},
    )
    body = event_record(event, max_text_chars=100).body
    assert body["output"]["answer"] == answer[:100]
    assert body["output"]["citations"] == [{"text": "short"}]
    assert body["explanation"]["sentences"] == [answer[:100]]
    digest = "sha256:" + hashlib.sha256(answer.encode()).hexdigest()
    assert body["truncated"] == [
        {"path": "output.answer", "chars": len(answer), "sha256": digest},
        {"path": "explanation.sentences[0]", "chars": len(answer), "sha256": digest},
    ]
    assert len(json.dumps(body)) < 2000
    short = event_record(dataclasses.replace(event, output={"answer": "ok"}, explanation=None), 100).body
    assert "truncated" not in short


def test_outputs_and_explanations_derived_from_a_redacted_request_are_redacted_too() -> None:
    event = AuditEvent(
        endpoint="/v1/answers",
        request={"question": "Refund for Grace Hopper, grace@navy.mil?", "context": {"user": "Grace Hopper"}},
        output={"answer": "Grace Hopper can write to grace@navy.mil for a refund.", "citations": []},
        explanation=[{"id": "i1", "matched_terms": ["grace", "hopper", "refund"]}],
    )
    pending = event_record(event)
    chained = json.dumps(pending.body).lower()
    assert "grace" not in chained
    assert "hopper" not in chained
    assert "navy.mil" not in chained
    assert pending.body["explanation"][0]["matched_terms"] == ["[name]", "[name]", "refund"]
    kept = json.loads(pending.personal or "{}")["found"]
    assert {f["path"].split(".")[0].split("[")[0] for f in kept} == {"question", "context", "output", "explanation"}


def test_a_reviewer_note_is_redacted_with_the_names_of_the_record_it_is_about() -> None:
    target = Stored(
        seq=1,
        id="aud_1",
        ts=0.0,
        kind="inference",
        endpoint="/v1/search",
        review_state="pending",
        prev_hash="",
        hash="h",
        body={},
    )
    pending = review_record(target, "reject", "Called Hopper at +1 (555) 010-7788, see ada@example.org", {}, ["Hopper"])
    assert pending.body["note"] == "Called [name] at [phone], see [email]"
    assert {f["kind"] for f in json.loads(pending.personal or "{}")["found"]} == {"name", "phone", "email"}
    assert review_record(target, "approve", "fine", {}).personal is None


def test_free_text_reasons_of_model_changes_are_redacted() -> None:
    pending = model_change_record({"action": "promote", "reason": "asked by ada@example.org"}, {})
    assert pending.body["reason"] == "asked by [email]"
    assert pending.personal is not None


def every_pattern(text: str) -> tuple[str, list[dict[str, str]]]:
    """The redaction with no short cut: every pattern on the whole string; the text and what was found."""
    every = Redactor()

    def digits(m: re.Match[str]) -> str:
        return "".join(c for c in m.group() if c.isdigit())

    out = EMAIL.sub(lambda m: every._take("email", "q", m.group()), text)
    out = CARD.sub(
        lambda m: (
            every._take("card", "q", m.group()) if 13 <= len(digits(m)) <= 19 and luhn_ok(digits(m)) else m.group()
        ),
        out,
    )
    out = PHONE.sub(
        lambda m: (
            every._take("phone", "q", m.group())
            if 7 <= len(digits(m)) <= 15
            and (m.group().startswith(("+", "(")) or any(c in " .()-" for c in m.group()) or len(digits(m)) >= 10)
            else m.group()
        ),
        out,
    )
    return out, every.found


def test_skipping_patterns_that_cannot_match_changes_nothing() -> None:
    """Strings without an "@" or a pair of digits skip those patterns: the result and what was found stay as if
    every pattern ran on every string (random strings built from the characters the patterns care about)."""
    rng = random.Random(7)

    def number() -> str:  # digit groups (mostly pairs), one separator, maybe a country or an area code
        sizes = [rng.choice([1, 2, 2, 2, 3, 4]) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.2:
            sizes = [1] * rng.randint(12, 19)  # a card number written digit by digit
        groups = ["".join(rng.choice("0123456789") for _ in range(n)) for n in sizes]
        return rng.choice(["", "+1 ", "(20) ", "+"]) + rng.choice(["", " ", "-", "."]).join(groups)

    pieces = ["ab", "x@y.io", "a.b@c", "@", "(", ")", "_%", "7"]
    for _ in range(3000):
        chunks = [number() if rng.random() < 0.6 else rng.choice(pieces) for _ in range(rng.randint(1, 4))]
        text = rng.choice(["", " "]).join(chunks)
        fast = Redactor()
        assert (fast.text(text, "q"), fast.found) == every_pattern(text), text
