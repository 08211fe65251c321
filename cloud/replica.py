"""A gym's replica as the device sees it: rows, snapshot pages, change pages and checkpoints.

A gym's replica is its organisation's plans, members and memberships plus the gym's own opening
hours and closures (live rows only). Every replica write bumps the organisation's version first
(``db.bump_version``) and stamps the rows it changes with it, so versions follow commit order and
a reader that saw version V has seen every change up to V.

Cursors are opaque to the device but simple here: a snapshot cursor is ``kind:id`` (the last row
sent), a change cursor ``version:kind:id``. Both walk indexes (keyset pagination), so a page costs
the same at the start and at the end of a 100,000-member organisation, and memory is bounded by
the page size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud import db
from cloud.errors import BadRequest, CursorExpired
from sync.protocol import (
    DEFAULT_PAGE_ROWS,
    KIND_ORDER,
    KINDS,
    MAX_PAGE_ROWS,
    Checkpoint,
    ReplicaRow,
    checksum,
    need_id,
)


def row_data(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """The wire ``data`` of a stored row (the same shape ``sync.protocol.make_row`` returns)."""
    if kind == "plan":
        data: dict[str, Any] = {"name": row["name"], "windows": [list(w) for w in row["windows"]]}
        # Left out when there is no limit: the protocol's normal form (sync.protocol._plan_data).
        if row.get("max_visits_per_day") is not None:
            data["max_visits_per_day"] = int(row["max_visits_per_day"])
        return data
    if kind == "member":
        return {
            "organization_id": row["organization_id"],
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "status": row["status"],
            "is_staff": bool(row["is_staff"]),
            "code_hash": row["code_hash"],
        }
    if kind == "membership":
        remaining = row["remaining_classes"]
        return {
            "member_id": row["member_id"],
            "plan_id": row["plan_id"],
            "type": row["type"],
            "start_date": row["start_date"],
            "end_date": row["end_date"],
            "remaining_classes": None if remaining is None else int(remaining),
        }
    if kind == "pass":
        return {
            "member_id": row["member_id"],
            "organization_id": row["organization_id"],
            "public_key": row["public_key"],
            "period_s": int(row["period_s"]),
            "status": row["status"],
        }
    if kind == "hours":
        return {
            "weekday": int(row["weekday"]),
            "open_minute": int(row["open_minute"]),
            "close_minute": int(row["close_minute"]),
        }
    if kind == "closure":
        return {
            "start_date": row["start_date"],
            "end_date": row["end_date"],
            "reason": row["reason"],
        }
    raise ValueError(f"unknown kind {kind!r}")


def replica_row(kind: str, row: dict[str, Any], *, with_version: bool) -> ReplicaRow:
    """A stored row as a protocol row (a tombstone if deleted). Rows were validated with
    ``make_row`` when written, so they are not validated again on the way out."""
    version = int(row["version"]) if with_version else None
    if row["deleted"]:
        return ReplicaRow(kind, row["id"], None, True, version)
    return ReplicaRow(kind, row["id"], row_data(kind, row), False, version)


# -- parameters ------------------------------------------------------------------------------------


def parse_limit(text: str | None) -> int:
    """The ``limit`` query parameter: 1..MAX_PAGE_ROWS, default DEFAULT_PAGE_ROWS."""
    if text is None:
        return DEFAULT_PAGE_ROWS
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_ROWS:
        raise BadRequest(f"limit: expected an integer 1..{MAX_PAGE_ROWS}")
    return int(text)


def parse_since(text: str | None) -> int:
    if text is None:
        raise BadRequest("since: missing (the replica version the device holds)")
    if not text.isdigit() or len(text) > 18:
        raise BadRequest("since: expected a version number >= 0")
    return int(text)


def snapshot_cursor(kind: str, row_id: str) -> str:
    return f"{kind}:{row_id}"


def parse_snapshot_cursor(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    kind, sep, row_id = text.partition(":")
    if not sep or kind not in KIND_ORDER:
        raise BadRequest("after: not a snapshot cursor (take it from the previous page's next)")
    try:
        need_id(row_id, "after")
    except ValueError:
        raise BadRequest("after: not a snapshot cursor") from None
    return kind, row_id


def change_cursor(version: int, kind: str, row_id: str) -> str:
    return f"{version}:{kind}:{row_id}"


def parse_change_cursor(text: str | None) -> tuple[int, int, str] | None:
    if text is None:
        return None
    version, _, rest = text.partition(":")
    try:
        cursor = parse_snapshot_cursor(rest) if version.isdigit() and len(version) <= 18 else None
    except BadRequest:
        cursor = None
    if cursor is None:
        raise BadRequest("after: not a changes cursor (take it from the previous page's next)")
    return int(version), KIND_ORDER[cursor[0]], cursor[1]


# -- pages -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose replica: an organisation's rows plus one gym's."""

    organization_id: str
    gym_id: str


def _org(tx: db.Tx, scope: Scope) -> dict[str, Any]:
    org = db.organization(tx, scope.organization_id)
    if org is None:
        raise db.DatabaseError(f"organisation {scope.organization_id} is gone")
    return org


def snapshot_page(tx: db.Tx, scope: Scope, after: str | None, limit: int) -> dict[str, Any]:
    """``GET /v1/replica/snapshot``: live rows in (kind order, id) order after the cursor."""
    cursor = parse_snapshot_cursor(after)
    org = _org(tx, scope)
    rows: list[ReplicaRow] = []
    start = 0 if cursor is None else KIND_ORDER[cursor[0]]
    for kind in KINDS[start:]:
        after_id = cursor[1] if cursor is not None and kind == cursor[0] else None
        found = db.live_rows_page(
            tx, kind, scope.organization_id, scope.gym_id, after_id, limit - len(rows)
        )
        rows.extend(replica_row(kind, r, with_version=False) for r in found)
        if len(rows) >= limit:
            break
    nxt = snapshot_cursor(rows[-1].kind, rows[-1].id) if len(rows) >= limit else None
    return {
        "version": int(org["version"]),
        "rows": [r.to_wire() for r in rows],
        "next": nxt,
        "code_salt": org["code_salt"],
    }


def checkpoint(tx: db.Tx, scope: Scope, version: int) -> Checkpoint:
    """Count and checksum of the gym's live replica, read in ``tx``, which must be a read
    transaction that read ``version`` (one snapshot: versions follow commit order, so the totals
    at a version never change). They are cached in the database's ``BoundedCache`` under
    (organisation, gym, version): every heartbeat and every last change page of a gym at one
    version costs one aggregate query in all, and a version bump makes a new key."""
    key = ("replica_totals", scope.organization_id, scope.gym_id, version)
    totals = tx.cache.get(key)
    if totals is None:
        totals = db.replica_totals(tx, scope.organization_id, scope.gym_id)
        tx.cache.put(key, totals)
    count, total = totals
    return Checkpoint(version=version, checksum=checksum([total]), count=count)


def check_since(since: int, version: int, purged_version: int) -> None:
    """410 when the device's version cannot be brought forward by changes: tombstones it would
    need were purged, or it is newer than this cloud (restored from a backup)."""
    if since < purged_version:
        raise CursorExpired(
            f"version {since} is older than purged tombstones ({purged_version}): take a snapshot"
        )
    if since > version:
        raise CursorExpired(
            f"version {since} is newer than the cloud's ({version}): take a snapshot"
        )


def change_page(
    tx: db.Tx, scope: Scope, since: int, after: str | None, limit: int
) -> dict[str, Any]:
    """``GET /v1/replica/changes``: rows and tombstones with version > since in (version, kind
    order, id) order; the last page carries the checkpoint, read in the same transaction."""
    cursor = parse_change_cursor(after)
    org = _org(tx, scope)
    version, purged = int(org["version"]), int(org["purged_version"])
    check_since(since, version, purged)
    found: list[ReplicaRow] = []
    for kind in KINDS:
        # limit + 1 per kind: more than `limit` in all means another page follows.
        stored = db.changed_rows(
            tx, kind, scope.organization_id, scope.gym_id, since, cursor, limit + 1
        )
        found.extend(replica_row(kind, r, with_version=True) for r in stored)
    found.sort(key=lambda r: (r.version, KIND_ORDER[r.kind], r.id))
    page: dict[str, Any] = {"since": since}
    if len(found) > limit:
        last = found[limit - 1]
        page["rows"] = [r.to_wire() for r in found[:limit]]
        page["next"] = change_cursor(int(last.version or 0), last.kind, last.id)
        page["checkpoint"] = None
    else:
        page["rows"] = [r.to_wire() for r in found]
        page["next"] = None
        page["checkpoint"] = checkpoint(tx, scope, version).to_wire()
    page["code_salt"] = org["code_salt"]
    return page
