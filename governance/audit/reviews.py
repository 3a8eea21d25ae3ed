"""Human oversight: a reviewer's decision on a record, chained as a record of its own.

The decision moves the target's (derived, unchained) review state in the same commit; the target itself is never
changed, so the chain keeps what was decided, by whom and why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Literal

from governance.audit.records import envelope
from governance.audit.redact import redact_free_text
from governance.audit.store import Pending, Stored

Decision = Literal["approve", "reject", "escalate"]
DECISION_STATE: dict[Decision, str] = {"approve": "approved", "reject": "rejected", "escalate": "escalated"}


def review_record(
    target: Stored, decision: Decision, note: str, caller: Mapping[str, str], names: Sequence[str] = ()
) -> Pending:
    """The chained record of a reviewer's decision on ``target``, moving its review state when committed.

    Args:
        target: The record decided on.
        decision: ``approve`` and ``reject`` take it out of the review queue; ``escalate`` keeps it there.
        note: The reviewer's reasons.
        caller: The reviewer's ``{"key_id", "role"}``.
        names: Names to take out of the note besides e-mails, phones and cards (those redacted from the target).

    Returns:
        The record to chain; its ``review_update`` moves the target's review state in the same commit.
    """
    # A note is free text a person wrote: redacted like a request, including the names taken out of the target.
    redacted_note, found = redact_free_text(note, "note", names)
    body = {
        **envelope("review", f"/v1/audit/records/{target.id}/review"),
        "caller": dict(caller),
        "target_id": target.id,
        "decision": decision,
        "note": redacted_note,
        "previous_state": target.review_state,
        "review": {"state": "not_required", "reason": None},
    }
    personal = json.dumps({"found": found}) if found else None
    return Pending(body, personal, (target.id, DECISION_STATE[decision]))
