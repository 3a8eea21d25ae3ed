"""Redaction of personal data from audited requests."""

from __future__ import annotations

from governance.audit.chain import canonical_json, record_hash
from governance.audit.redact import luhn_ok, redact_request


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
    assert record_hash(a) == record_hash(b)
