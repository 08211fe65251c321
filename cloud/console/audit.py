"""The audit log: every staff action that changes something leaves a row (who, what, target, when,
from where), written in the same transaction as the change, so a change and its record are kept or
lost together. Owners read it on ``/console/audit`` (newest first).

Actions are dotted words (``staff.invite``, ``staff.role``, ``member.create``...); ``target`` names
what was acted on (an id, or an email for an invite); ``detail`` says the rest in plain words. No
password, token or card secret ever goes into a row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cloud import db
from cloud.console.auth import StaffUser
from sync.protocol import utc_text

MAX_TEXT = 500  # longer targets and details are cut (a row is a record, not a copy of the data)
PAGE_ROWS = 50
CLI_ADDRESS = "command line"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def record(
    tx: db.Tx,
    staff: StaffUser | None,
    action: str,
    target: str,
    detail: str,
    address: str,
    *,
    at: datetime | None = None,
    organization_id: str | None = None,
) -> None:
    """Write one audit row inside ``tx`` (the transaction making the change). ``staff`` is who
    acted (None: the command line, then ``organization_id`` is required); ``address`` the
    client's address (``auth.address_of(request)``, or CLI_ADDRESS); ``at`` the cloud's time
    (pass ``auth.now_of(request)``: the injected clock; the system clock when omitted).
    ValueError when no organisation is known."""
    at = at or datetime.now(UTC)
    org = staff.organization_id if staff is not None else organization_id
    if org is None:
        raise ValueError("an audit row needs the organisation")
    db.insert_audit(
        tx,
        org,
        None if staff is None else staff.id,
        action,
        _cut(target),
        _cut(detail),
        utc_text(at),
        address,
    )


def page(tx: db.Tx, org_id: str, before: int | None, limit: int = PAGE_ROWS) -> dict[str, Any]:
    """One page of the organisation's audit rows, newest first: ``{"rows": [...], "next": id or
    None}`` (pass ``next`` as ``before`` for the following, older page)."""
    rows = db.audit_page(tx, org_id, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"rows": rows, "next": int(rows[-1]["id"]) if more and rows else None}
