"""Sync protocol v3: the message shapes both ends share (docs/sync-protocol.md).

Pure code: no I/O, no httpx, no SQL. The device's agent and the reference cloud both parse what
they receive through the functions here, so a message that one side accepts means the same thing
to the other, and a hostile or broken message becomes a ``ProtocolError`` that names the field,
never an exception from deep inside.

Replica rows are ``(kind, id, data)``. Each row's hash is computed by whoever holds the row, from
its canonical JSON (never taken from the wire), and a replica's checksum is the sum of its row
hashes modulo 2**64: order-independent, so the cloud and the device can compute it over rows they
hold in different orders, and cheap to keep per row in a database column.

Times on the wire are UTC text with microseconds and a ``Z`` (``2026-05-01T17:03:09.120000Z``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sync.passes import MAX_PERIOD_S, MIN_PERIOD_S, PASS_ID_PATTERN, public_key_from_text

# 2: phone passes (the replica kind ``pass``, ``pass_id`` on uploaded check-ins).
# 3: the turnstile talks back: upload items carry a ``kind`` (``checkin`` or a passage event:
# ``entry``, ``annulled``, ``tailgating``, ``exit``), plan data may carry ``max_visits_per_day``,
# the heartbeat may carry ``occupancy``.
PROTOCOL_VERSION = 3
# Sent by the device on every request and by the cloud on every answer; a cloud that does not
# speak the device's version answers 426 and the agent stops and reports.
PROTOCOL_HEADER = "FitFlow-Protocol"

# Replica kinds in snapshot order: parents before children, so a page never holds an orphan whose
# parent comes later.
KINDS: tuple[str, ...] = ("plan", "member", "membership", "pass", "hours", "closure")
KIND_ORDER: dict[str, int] = {kind: n for n, kind in enumerate(KINDS)}

# Upload limits. A batch over either answers 413 and the agent halves its batch.
MAX_BATCH_ITEMS = 500
MAX_REQUEST_BYTES = 1 << 20
# Replica page sizes (rows per page).
DEFAULT_PAGE_ROWS = 1000
MAX_PAGE_ROWS = 5000
# The agent refuses a response body larger than this (a broken proxy or a hostile server). A
# full page of MAX_PAGE_ROWS rows is about 2 MiB; parsed, 8 MiB of JSON keeps the agent's memory
# well inside its 60 MB target.
MAX_RESPONSE_BYTES = 8 << 20

ID_MAX_CHARS = 64
NAME_MAX_CHARS = 200
CODE_HASH_CHARS = 64
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKSUM = re.compile(r"[0-9a-f]{16}")
# Wire and stored times: UTC with microseconds and a Z, fixed width, so text order is time order.
UTC_TEXT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_UTC_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
_MASK64 = (1 << 64) - 1

MEMBER_STATUSES = frozenset({"ACTIVE", "EXPIRED", "PAUSED"})
PASS_STATUSES = frozenset({"ACTIVE", "REVOKED"})
MEMBERSHIP_TYPES = frozenset({"SUBSCRIPTION", "CLASS_PACK", "PT"})
CLOCK_QUALITIES = frozenset({"ntp_synced", "server_anchored", "unsynced"})
DECISIONS = frozenset({"granted", "denied"})
# Upload item kinds: a check-in, or one of the door's passage events (docs/sync-protocol.md).
CHECKIN_KIND = "checkin"
EVENT_KINDS: tuple[str, ...] = ("entry", "annulled", "tailgating", "exit")
# Events that always name the granted check-in they resolve, and the one that never does.
EVENTS_WITH_CHECKIN = frozenset({"entry", "annulled"})
EVENTS_WITHOUT_CHECKIN = frozenset({"tailgating"})
# A plan's visit limit (entries per member per local day) and an occupancy count stay below this.
MAX_VISITS_PER_DAY = 100
MAX_OCCUPANCY = 1_000_000

# Per-item answers to an upload.
CREATED, DUPLICATE, REJECTED = "created", "duplicate", "rejected"
# Codes of a rejected item. The device keeps a rejected row (state ``rejected``), never re-sends it.
REJECT_INVALID = "invalid_item"  # a field is missing, of the wrong type or out of range
REJECT_ID_CONFLICT = "id_conflict"  # the id is already taken by another device's check-in


class ProtocolError(ValueError):
    """A message that does not follow the protocol. ``where`` is the dotted path of the offending
    field (``"rows[3].data.start_date"``), ``str(err)`` says what is wrong in plain words. Never
    contains more than a short, escaped excerpt of the bad value."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


# -- time ------------------------------------------------------------------------------------------


def utc_text(moment: datetime) -> str:
    """``moment`` as wire text (``UTC_TEXT_FORMAT``, always 27 characters). Raises ValueError for a
    naive datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a wire time must be timezone-aware")
    m = moment.astimezone(UTC)
    # Formatted by hand: strftime's %Y does not zero-pad years before 1000, which would break the
    # fixed width that makes text order equal time order.
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond:06d}Z"
    )


def utc_from_text(text: str) -> datetime:
    """Text written by ``utc_text`` back to the aware UTC datetime, for text this program stored
    itself (a database column). Raises ValueError for text that does not read as that format; a
    message from the other end goes through ``parse_utc`` instead."""
    return datetime.strptime(text, UTC_TEXT_FORMAT).replace(tzinfo=UTC)


def parse_utc(value: object, where: str) -> datetime:
    """Wire time text to an aware UTC datetime; ProtocolError otherwise."""
    if not isinstance(value, str) or not _UTC_TEXT.fullmatch(value):
        raise ProtocolError(where, "expected UTC time text like 2026-05-01T17:03:09.120000Z")
    try:
        return utc_from_text(value)
    except ValueError:
        raise ProtocolError(where, "not a real date and time") from None


def _date_text(value: object, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _DATE_TEXT.fullmatch(value):
        raise ProtocolError(where, "expected a date like 2026-05-01")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ProtocolError(where, "not a real date") from None
    return value


# -- field checks ----------------------------------------------------------------------------------


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def need_object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(where, f"expected an object, got {type(value).__name__}")
    return value


def need_id(value: object, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProtocolError(
            where, f"expected an id of 1-{ID_MAX_CHARS} characters A-Z a-z 0-9 . _ : -"
        )
    return value


def need_int(
    value: object, where: str, low: int, high: int, *, optional: bool = False
) -> int | None:
    if value is None and optional:
        return None
    # bool is an int in Python; true is not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(where, f"expected an integer, got {_short(value)}")
    if not low <= value <= high:
        raise ProtocolError(where, f"{value} is out of range {low}..{high}")
    return value


def need_text(value: object, where: str, max_chars: int = NAME_MAX_CHARS) -> str:
    if not isinstance(value, str):
        raise ProtocolError(where, f"expected text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ProtocolError(where, f"longer than {max_chars} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ProtocolError(where, "contains control characters")
    return value


def need_choice(value: object, where: str, choices: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ProtocolError(where, f"expected one of {', '.join(sorted(choices))}")
    return value


def need_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(where, "expected true or false")
    return value


def _only_keys(obj: Mapping[str, Any], where: str, allowed: Iterable[str]) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise ProtocolError(f"{where}.{extra[0]}" if where else extra[0], "unknown field")


# -- replica rows ----------------------------------------------------------------------------------

_INT32 = 2**31 - 1
_BIG = 2**63 - 1
# A monotonic reading is nanoseconds since boot; 2**62 ns is 146 years of uptime. The bound leaves
# headroom so the cloud's sums and differences of two readings stay inside a signed 64-bit
# integer (SQLite and PostgreSQL BIGINT) instead of overflowing on a hostile value.
MAX_MONOTONIC_NS = 2**62 - 1


def _plan_data(d: Mapping[str, Any], w: str) -> dict[str, Any]:
    """A plan: its name, weekly access windows and (protocol 3) ``max_visits_per_day``, the most
    entries a member of the plan may make in one local day (1-100; null or absent: no limit).
    The normal form leaves the key out when there is no limit, so a plan without one hashes as it
    did in protocol 2 and no stored row hash changes."""
    _only_keys(d, w, ("name", "windows", "max_visits_per_day"))
    raw = d.get("windows")
    if not isinstance(raw, list):
        raise ProtocolError(
            f"{w}.windows", "expected a list of [weekday, start_minute, end_minute]"
        )
    windows = []
    for n, item in enumerate(raw):
        iw = f"{w}.windows[{n}]"
        if not isinstance(item, list) or len(item) != 3:
            raise ProtocolError(iw, "expected [weekday, start_minute, end_minute]")
        weekday = need_int(item[0], f"{iw}[0]", 0, 6)
        start = need_int(item[1], f"{iw}[1]", 0, 1439)
        end = need_int(item[2], f"{iw}[2]", 1, 1440)
        if start >= end:
            raise ProtocolError(iw, "start_minute must be before end_minute")
        windows.append([weekday, start, end])
    data: dict[str, Any] = {
        "name": need_text(d.get("name"), f"{w}.name"),
        "windows": sorted(windows),
    }
    limit = need_int(
        d.get("max_visits_per_day"), f"{w}.max_visits_per_day", 1, MAX_VISITS_PER_DAY, optional=True
    )
    if limit is not None:
        data["max_visits_per_day"] = limit
    return data


def _member_data(d: Mapping[str, Any], w: str) -> dict[str, Any]:
    keys = ("organization_id", "first_name", "last_name", "status", "is_staff", "code_hash")
    _only_keys(d, w, keys)
    code = d.get("code_hash")
    if code is not None and (not isinstance(code, str) or not _HEX64.fullmatch(code)):
        raise ProtocolError(f"{w}.code_hash", "expected 64 lowercase hex digits or null")
    return {
        "organization_id": need_id(d.get("organization_id"), f"{w}.organization_id"),
        "first_name": need_text(d.get("first_name"), f"{w}.first_name"),
        "last_name": need_text(d.get("last_name"), f"{w}.last_name"),
        "status": need_choice(d.get("status"), f"{w}.status", MEMBER_STATUSES),
        "is_staff": need_bool(d.get("is_staff"), f"{w}.is_staff"),
        "code_hash": code,
    }


def _membership_data(d: Mapping[str, Any], w: str) -> dict[str, Any]:
    keys = ("member_id", "plan_id", "type", "start_date", "end_date", "remaining_classes")
    _only_keys(d, w, keys)
    start = _date_text(d.get("start_date"), f"{w}.start_date")
    end = _date_text(d.get("end_date"), f"{w}.end_date", optional=True)
    if end is not None and start is not None and end < start:
        raise ProtocolError(f"{w}.end_date", "before start_date")
    return {
        "member_id": need_id(d.get("member_id"), f"{w}.member_id"),
        "plan_id": need_id(d.get("plan_id"), f"{w}.plan_id", optional=True),
        "type": need_choice(d.get("type"), f"{w}.type", MEMBERSHIP_TYPES),
        "start_date": start,
        "end_date": end,
        # Negative is legal: two doors offline spent the last class twice (an overdraft).
        "remaining_classes": need_int(
            d.get("remaining_classes"), f"{w}.remaining_classes", -_INT32, _INT32, optional=True
        ),
    }


def _pass_data(d: Mapping[str, Any], w: str) -> dict[str, Any]:
    """A phone pass (docs/passes.md): whose it is, its public key (43 characters of base64url),
    its rotation period in seconds and whether it is revoked."""
    _only_keys(d, w, ("member_id", "organization_id", "public_key", "period_s", "status"))
    key = d.get("public_key")
    try:
        public_key_from_text(key)
    except ValueError as exc:
        raise ProtocolError(f"{w}.public_key", str(exc)) from None
    return {
        "member_id": need_id(d.get("member_id"), f"{w}.member_id"),
        "organization_id": need_id(d.get("organization_id"), f"{w}.organization_id"),
        "public_key": key,
        "period_s": need_int(d.get("period_s"), f"{w}.period_s", MIN_PERIOD_S, MAX_PERIOD_S),
        "status": need_choice(d.get("status"), f"{w}.status", PASS_STATUSES),
    }


def _hours_data(d: Mapping[str, Any], w: str) -> dict[str, Any]:
    _only_keys(d, w, ("weekday", "open_minute", "close_minute"))
    data = {
        "weekday": need_int(d.get("weekday"), f"{w}.weekday", 0, 6),
        "open_minute": need_int(d.get("open_minute"), f"{w}.open_minute", 0, 1439),
        "close_minute": need_int(d.get("close_minute"), f"{w}.close_minute", 1, 1440),
    }
    if data["open_minute"] >= data["close_minute"]:
        raise ProtocolError(w, "open_minute must be before close_minute")
    return data


def _closure_data(d: Mapping[str, Any], w: str) -> dict[str, Any]:
    _only_keys(d, w, ("start_date", "end_date", "reason"))
    start = _date_text(d.get("start_date"), f"{w}.start_date")
    end = _date_text(d.get("end_date"), f"{w}.end_date")
    if end is not None and start is not None and end < start:
        raise ProtocolError(f"{w}.end_date", "before start_date")
    return {
        "start_date": start,
        "end_date": end,
        "reason": need_text(d.get("reason"), f"{w}.reason"),
    }


_DATA_PARSERS = {
    "plan": _plan_data,
    "member": _member_data,
    "membership": _membership_data,
    "pass": _pass_data,
    "hours": _hours_data,
    "closure": _closure_data,
}


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """One replica row. ``data`` is normalised (plan windows sorted, every field present);
    ``deleted`` rows are tombstones and carry ``data=None``; ``version`` is the cloud version of the
    row's last change (None in snapshot pages, where it does not matter)."""

    kind: str
    id: str
    data: dict[str, Any] | None
    deleted: bool = False
    version: int | None = None

    def canonical(self) -> bytes:
        """The bytes hashed for the checksum: ``[kind, id, data]`` as compact JSON, keys sorted."""
        return canonical_bytes(self.kind, self.id, self.data)

    def row_hash(self) -> int:
        """This row's hash as a signed 64-bit integer (fits SQLite INTEGER and PostgreSQL
        BIGINT). Raises ValueError for a tombstone."""
        if self.deleted or self.data is None:
            raise ValueError("a tombstone has no row hash")
        return row_hash(self.kind, self.id, self.data)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.id}
        if self.version is not None:
            out["version"] = self.version
        if self.deleted:
            out["deleted"] = True
        else:
            out["data"] = self.data
        return out


def make_row(
    kind: str, row_id: str, data: Mapping[str, Any], version: int | None = None
) -> ReplicaRow:
    """A validated, normalised row from trusted code (the cloud's database, the demo seeder).
    Raises ProtocolError if the data would not pass the other side's parser."""
    if kind not in _DATA_PARSERS:
        raise ProtocolError("kind", f"unknown kind {_short(kind)}")
    _row_id(kind, row_id, "id")
    return ReplicaRow(kind, row_id, _DATA_PARSERS[kind](dict(data), "data"), False, version)


def parse_row(value: object, where: str, *, tombstones: bool) -> ReplicaRow:
    """A replica row from the wire. ``tombstones`` says whether ``deleted`` rows are allowed (in a
    change page, not in a snapshot page). Raises ProtocolError naming the field."""
    obj = need_object(value, where)
    _only_keys(obj, where, ("kind", "id", "data", "deleted", "version"))
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _DATA_PARSERS:
        raise ProtocolError(f"{where}.kind", f"expected one of {', '.join(KINDS)}")
    row_id = _row_id(kind, obj.get("id"), f"{where}.id")
    version = need_int(obj.get("version"), f"{where}.version", 0, _BIG, optional=True)
    deleted = need_bool(obj.get("deleted", False), f"{where}.deleted")
    if deleted:
        if not tombstones:
            raise ProtocolError(f"{where}.deleted", "a snapshot page holds no tombstones")
        if "data" in obj:
            raise ProtocolError(f"{where}.data", "a tombstone carries no data")
        return ReplicaRow(kind, row_id, None, True, version)
    data = _DATA_PARSERS[kind](need_object(obj.get("data"), f"{where}.data"), f"{where}.data")
    return ReplicaRow(kind, row_id, data, False, version)


def _row_id(kind: str, value: object, where: str) -> str:
    row_id = need_id(value, where)
    assert row_id is not None
    if kind == "pass" and PASS_ID_PATTERN.fullmatch(row_id) is None:
        raise ProtocolError(where, "a pass id is 8 characters from A-Z and 2-7")
    return row_id


def canonical_bytes(kind: str, row_id: str, data: Mapping[str, Any] | None) -> bytes:
    return json.dumps(
        [kind, row_id, data], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def row_hash(kind: str, row_id: str, data: Mapping[str, Any]) -> int:
    """BLAKE2b-64 of the canonical row, as a signed 64-bit integer."""
    digest = hashlib.blake2b(canonical_bytes(kind, row_id, data), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def checksum(hashes: Iterable[int]) -> str:
    """Order-independent checksum of a set of rows: the sum of their hashes modulo 2**64, as 16
    lowercase hex digits. Streams, so memory does not grow with the row count."""
    total = 0
    for value in hashes:
        total = (total + (value & _MASK64)) & _MASK64
    return f"{total:016x}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The state the cloud vouches for at ``version``: ``count`` live rows whose checksum is
    ``checksum``. The device switches its replica only when its own count and checksum match."""

    version: int
    checksum: str
    count: int

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "checksum": self.checksum, "count": self.count}


def parse_checkpoint(value: object, where: str) -> Checkpoint:
    obj = need_object(value, where)
    _only_keys(obj, where, ("version", "checksum", "count"))
    text = obj.get("checksum")
    if not isinstance(text, str) or not _CHECKSUM.fullmatch(text):
        raise ProtocolError(f"{where}.checksum", "expected 16 lowercase hex digits")
    return Checkpoint(
        version=need_int(obj.get("version"), f"{where}.version", 0, _BIG),
        checksum=text,
        count=need_int(obj.get("count"), f"{where}.count", 0, _BIG),
    )


# -- replica pages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    """``GET /v1/replica/snapshot``: live rows in (kind, id) order after the request's cursor.
    ``version`` is the cloud version when the page was read; ``next`` is the cursor of the next
    page, None on the last one; ``code_salt`` is the organisation's code-hash key."""

    version: int
    rows: tuple[ReplicaRow, ...]
    next: str | None
    code_salt: bytes


@dataclass(frozen=True, slots=True)
class ChangePage:
    """``GET /v1/replica/changes?since=V``: rows (and tombstones) changed after version ``since``,
    in (version, kind, id) order. ``next`` is the cursor of the next page; on the last page
    (``next`` None) ``checkpoint`` describes the whole replica after applying every page."""

    since: int
    rows: tuple[ReplicaRow, ...]
    next: str | None
    checkpoint: Checkpoint | None
    code_salt: bytes


_CURSOR = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def _cursor(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CURSOR.fullmatch(value):
        raise ProtocolError(where, "expected an opaque cursor text or null")
    return value


def _salt(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ProtocolError(where, "expected the code salt as 64 lowercase hex digits")
    return bytes.fromhex(value)


def _rows(value: object, where: str, *, tombstones: bool, limit: int) -> tuple[ReplicaRow, ...]:
    if not isinstance(value, list):
        raise ProtocolError(where, "expected a list of rows")
    if len(value) > limit:
        raise ProtocolError(where, f"{len(value)} rows, more than the {limit} asked for")
    return tuple(
        parse_row(item, f"{where}[{n}]", tombstones=tombstones) for n, item in enumerate(value)
    )


def parse_snapshot_page(value: object, *, limit: int = MAX_PAGE_ROWS) -> SnapshotPage:
    obj = need_object(value, "")
    _only_keys(obj, "", ("version", "rows", "next", "code_salt"))
    return SnapshotPage(
        version=need_int(obj.get("version"), "version", 0, _BIG),
        rows=_rows(obj.get("rows"), "rows", tombstones=False, limit=limit),
        next=_cursor(obj.get("next"), "next"),
        code_salt=_salt(obj.get("code_salt"), "code_salt"),
    )


def parse_change_page(value: object, *, limit: int = MAX_PAGE_ROWS) -> ChangePage:
    obj = need_object(value, "")
    _only_keys(obj, "", ("since", "rows", "next", "checkpoint", "code_salt"))
    nxt = _cursor(obj.get("next"), "next")
    raw_checkpoint = obj.get("checkpoint")
    if nxt is None and raw_checkpoint is None:
        raise ProtocolError("checkpoint", "the last page of changes must carry a checkpoint")
    if nxt is not None and raw_checkpoint is not None:
        raise ProtocolError("checkpoint", "only the last page of changes carries a checkpoint")
    page = ChangePage(
        since=need_int(obj.get("since"), "since", 0, _BIG),
        rows=_rows(obj.get("rows"), "rows", tombstones=True, limit=limit),
        next=nxt,
        checkpoint=None
        if raw_checkpoint is None
        else parse_checkpoint(raw_checkpoint, "checkpoint"),
        code_salt=_salt(obj.get("code_salt"), "code_salt"),
    )
    for n, row in enumerate(page.rows):
        if row.version is None or row.version <= page.since:
            raise ProtocolError(
                f"rows[{n}].version", f"a change must be newer than since={page.since}"
            )
        if page.checkpoint is not None and row.version > page.checkpoint.version:
            raise ProtocolError(f"rows[{n}].version", "newer than the checkpoint")
    return page


# -- check-in upload -------------------------------------------------------------------------------

UPLOAD_FIELDS = (
    "kind",
    "id",
    "seq",
    "door_id",
    "decision",
    "reason",
    "member_id",
    "membership_id",
    "classes_used",
    "replica_version",
    "wall_time",
    "boot_id",
    "monotonic_ns",
    "clock_quality",
    "pass_id",
)


@dataclass(frozen=True, slots=True)
class UploadItem:
    """One journal row as the cloud receives it (``POST /v1/checkins``). ``pass_id`` is the phone
    pass the scanned code named (8 base32 characters, ``sync.passes``), None for a card or a
    malformed code (protocol 2; required on the wire, null allowed). On the wire it carries
    ``"kind": "checkin"`` (protocol 3), which sets it apart from a passage event (``EventItem``)
    in the same batch."""

    id: str
    seq: int
    door_id: str
    decision: str
    reason: str
    member_id: str | None
    membership_id: str | None
    classes_used: int
    replica_version: int
    wall_time: datetime
    boot_id: str
    monotonic_ns: int
    clock_quality: str
    pass_id: str | None = None

    kind = CHECKIN_KIND

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": CHECKIN_KIND,
            "id": self.id,
            "seq": self.seq,
            "door_id": self.door_id,
            "decision": self.decision,
            "reason": self.reason,
            "member_id": self.member_id,
            "membership_id": self.membership_id,
            "classes_used": self.classes_used,
            "replica_version": self.replica_version,
            "wall_time": utc_text(self.wall_time),
            "boot_id": self.boot_id,
            "monotonic_ns": self.monotonic_ns,
            "clock_quality": self.clock_quality,
            "pass_id": self.pass_id,
        }


_REASON = re.compile(r"[a-z][a-z_]{0,39}")
_BOOT_ID = re.compile(r"[A-Za-z0-9-]{0,64}")


def item_id(value: object) -> str | None:
    """The id of an upload item if it has a usable one (so a rejection can name it), else None."""
    if isinstance(value, dict):
        raw = value.get("id")
        if isinstance(raw, str) and len(raw) <= 64:
            try:
                return str(uuid.UUID(raw))
            except ValueError:
                return None
    return None


def parse_upload_item(value: object, where: str) -> UploadItem:
    """Validate one uploaded check-in. Raises ProtocolError naming the first bad field; the cloud
    answers that item ``rejected`` with ``invalid_item`` and goes on with the others."""
    obj = need_object(value, where)
    _only_keys(obj, where, UPLOAD_FIELDS)
    missing = [name for name in UPLOAD_FIELDS if name not in obj]
    if missing:
        raise ProtocolError(f"{where}.{missing[0]}", "missing")
    if obj["kind"] != CHECKIN_KIND:
        raise ProtocolError(f"{where}.kind", "expected checkin")
    canonical_id = item_id(obj)
    if canonical_id is None or canonical_id != obj["id"]:
        raise ProtocolError(f"{where}.id", "expected a lowercase UUID")
    reason = obj["reason"]
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise ProtocolError(f"{where}.reason", "expected a reason name like subscription")
    boot_id = obj["boot_id"]
    if not isinstance(boot_id, str) or not _BOOT_ID.fullmatch(boot_id):
        raise ProtocolError(f"{where}.boot_id", "expected a boot id (letters, digits, dashes)")
    pass_id = obj["pass_id"]
    if pass_id is not None and (
        not isinstance(pass_id, str) or not PASS_ID_PATTERN.fullmatch(pass_id)
    ):
        raise ProtocolError(
            f"{where}.pass_id", "expected null or a pass id (8 characters from A-Z and 2-7)"
        )
    return UploadItem(
        id=canonical_id,
        seq=need_int(obj["seq"], f"{where}.seq", 1, _BIG),
        door_id=need_id(obj["door_id"], f"{where}.door_id"),
        decision=need_choice(obj["decision"], f"{where}.decision", DECISIONS),
        reason=reason,
        member_id=need_id(obj["member_id"], f"{where}.member_id", optional=True),
        membership_id=need_id(obj["membership_id"], f"{where}.membership_id", optional=True),
        classes_used=need_int(obj["classes_used"], f"{where}.classes_used", 0, 1000),
        replica_version=need_int(obj["replica_version"], f"{where}.replica_version", 0, _BIG),
        wall_time=parse_utc(obj["wall_time"], f"{where}.wall_time"),
        boot_id=boot_id,
        monotonic_ns=need_int(obj["monotonic_ns"], f"{where}.monotonic_ns", 0, MAX_MONOTONIC_NS),
        clock_quality=need_choice(obj["clock_quality"], f"{where}.clock_quality", CLOCK_QUALITIES),
        pass_id=pass_id,
    )


EVENT_FIELDS = (
    "kind",
    "id",
    "seq",
    "door_id",
    "checkin_id",
    "wall_time",
    "boot_id",
    "monotonic_ns",
    "clock_quality",
)


@dataclass(frozen=True, slots=True)
class EventItem:
    """One of the door's passage events as the cloud receives it (protocol 3, ``POST
    /v1/checkins``, in the same batches as check-ins and in the same seq space).

    ``kind``: ``entry`` (the turnstile turned for the granted check-in ``checkin_id``),
    ``annulled`` (it did not turn within the door's passage timeout: the check-in ``checkin_id``
    is annulled and a class it used goes back to the membership), ``tailgating`` (a passage with
    no grant waiting; ``checkin_id`` is null) or ``exit`` (an exit passage, null, or a grant at
    an exit-side scanner, that check-in's id). Times and the clock fields are as on a check-in."""

    kind: str
    id: str
    seq: int
    door_id: str
    checkin_id: str | None
    wall_time: datetime
    boot_id: str
    monotonic_ns: int
    clock_quality: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "seq": self.seq,
            "door_id": self.door_id,
            "checkin_id": self.checkin_id,
            "wall_time": utc_text(self.wall_time),
            "boot_id": self.boot_id,
            "monotonic_ns": self.monotonic_ns,
            "clock_quality": self.clock_quality,
        }


def parse_event_item(value: object, where: str) -> EventItem:
    """Validate one uploaded passage event. Raises ProtocolError naming the first bad field (the
    cloud answers that item ``rejected`` with ``invalid_item``): every field is required;
    ``entry`` and ``annulled`` name a check-in (a lowercase UUID), ``tailgating`` names none
    (null), ``exit`` either."""
    obj = need_object(value, where)
    _only_keys(obj, where, EVENT_FIELDS)
    missing = [name for name in EVENT_FIELDS if name not in obj]
    if missing:
        raise ProtocolError(f"{where}.{missing[0]}", "missing")
    kind = need_choice(obj["kind"], f"{where}.kind", frozenset(EVENT_KINDS))
    canonical_id = item_id(obj)
    if canonical_id is None or canonical_id != obj["id"]:
        raise ProtocolError(f"{where}.id", "expected a lowercase UUID")
    checkin_id = obj["checkin_id"]
    if checkin_id is None:
        if kind in EVENTS_WITH_CHECKIN:
            raise ProtocolError(f"{where}.checkin_id", f"an {kind} event names its check-in")
    elif kind in EVENTS_WITHOUT_CHECKIN:
        raise ProtocolError(f"{where}.checkin_id", f"a {kind} event names no check-in (null)")
    elif item_id({"id": checkin_id}) != checkin_id:
        raise ProtocolError(f"{where}.checkin_id", "expected a lowercase UUID or null")
    boot_id = obj["boot_id"]
    if not isinstance(boot_id, str) or not _BOOT_ID.fullmatch(boot_id):
        raise ProtocolError(f"{where}.boot_id", "expected a boot id (letters, digits, dashes)")
    return EventItem(
        kind=kind,
        id=canonical_id,
        seq=need_int(obj["seq"], f"{where}.seq", 1, _BIG),
        door_id=need_id(obj["door_id"], f"{where}.door_id"),
        checkin_id=checkin_id,
        wall_time=parse_utc(obj["wall_time"], f"{where}.wall_time"),
        boot_id=boot_id,
        monotonic_ns=need_int(obj["monotonic_ns"], f"{where}.monotonic_ns", 0, MAX_MONOTONIC_NS),
        clock_quality=need_choice(obj["clock_quality"], f"{where}.clock_quality", CLOCK_QUALITIES),
    )


def parse_journal_item(value: object, where: str) -> UploadItem | EventItem:
    """One upload item of either kind (protocol 3): a check-in (``"kind": "checkin"``) or a
    passage event. Raises ProtocolError naming the first bad field."""
    obj = need_object(value, where)
    if "kind" not in obj:
        raise ProtocolError(f"{where}.kind", "missing")
    if obj["kind"] == CHECKIN_KIND:
        return parse_upload_item(obj, where)
    if not isinstance(obj["kind"], str) or obj["kind"] not in EVENT_KINDS:
        raise ProtocolError(
            f"{where}.kind", f"expected one of {', '.join((CHECKIN_KIND, *EVENT_KINDS))}"
        )
    return parse_event_item(obj, where)


@dataclass(frozen=True, slots=True)
class Anchor:
    """A moment both clocks agree on: the device's monotonic reading ``monotonic_ns`` in boot
    ``boot_id`` happened at cloud time ``server_time``."""

    boot_id: str
    monotonic_ns: int
    server_time: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "boot_id": self.boot_id,
            "monotonic_ns": self.monotonic_ns,
            "server_time": utc_text(self.server_time),
        }


def parse_anchor(value: object, where: str) -> Anchor:
    obj = need_object(value, where)
    _only_keys(obj, where, ("boot_id", "monotonic_ns", "server_time"))
    boot_id = obj.get("boot_id")
    if not isinstance(boot_id, str) or not boot_id or not _BOOT_ID.fullmatch(boot_id):
        raise ProtocolError(f"{where}.boot_id", "expected a boot id (letters, digits, dashes)")
    return Anchor(
        boot_id=boot_id,
        monotonic_ns=need_int(
            obj.get("monotonic_ns"), f"{where}.monotonic_ns", 0, MAX_MONOTONIC_NS
        ),
        server_time=parse_utc(obj.get("server_time"), f"{where}.server_time"),
    )


def place_in_time(item_boot: str, item_monotonic_ns: int, anchor: Anchor) -> datetime:
    """Cloud time of a device event, from an anchor of the same boot: the anchor's server time
    plus the monotonic distance between the two. Raises ValueError for another boot's anchor."""
    if item_boot != anchor.boot_id:
        raise ValueError("an anchor only places events of its own boot")
    return anchor.server_time + timedelta(
        microseconds=(item_monotonic_ns - anchor.monotonic_ns) / 1000
    )


@dataclass(frozen=True, slots=True)
class UploadResult:
    """The cloud's answer for one item. ``version`` is the cloud replica version that carries the
    item's side effect (a class-pack balance), None when it had none: until the device's replica
    reaches that version it keeps counting the class as used locally."""

    id: str | None
    status: str
    code: str | None = None
    detail: str = ""
    version: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            "version": self.version,
        }


def parse_upload_results(value: object, sent_ids: list[str]) -> tuple[list[UploadResult], datetime]:
    """The answer to an upload: one result per item sent, in order, plus the server time.
    Raises ProtocolError when the answer does not match what was sent."""
    obj = need_object(value, "")
    _only_keys(obj, "", ("results", "server_time"))
    raw = obj.get("results")
    if not isinstance(raw, list):
        raise ProtocolError("results", "expected a list")
    if len(raw) != len(sent_ids):
        raise ProtocolError("results", f"{len(raw)} results for {len(sent_ids)} items sent")
    results = []
    for n, (item, sent) in enumerate(zip(raw, sent_ids, strict=True)):
        w = f"results[{n}]"
        res = need_object(item, w)
        _only_keys(res, w, ("id", "status", "code", "detail", "version"))
        if res.get("id") != sent:
            raise ProtocolError(f"{w}.id", "does not match the item sent in this position")
        status = need_choice(
            res.get("status"), f"{w}.status", frozenset({CREATED, DUPLICATE, REJECTED})
        )
        code = res.get("code")
        if code is not None:
            code = need_id(code, f"{w}.code")
        if status == REJECTED and code is None:
            raise ProtocolError(f"{w}.code", "a rejection must carry a code")
        detail = res.get("detail", "")
        results.append(
            UploadResult(
                id=sent,
                status=status,
                code=code,
                detail=need_text(detail if detail is not None else "", f"{w}.detail", 500),
                version=need_int(res.get("version"), f"{w}.version", 0, _BIG, optional=True),
            )
        )
    return results, parse_utc(obj.get("server_time"), "server_time")


# -- heartbeat -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occupancy:
    """How many people the door counts in the gym (protocol 3, the heartbeat's ``occupancy``).

    ``now``: in the gym now by this door's count (entries minus exits, never below zero, reset at
    the gym's closing time); ``entries_today`` and ``exits_today``: since that reset;
    ``max_today``: the highest ``now`` since; ``capacity``: the door's configured limit, None for
    none. Counts are 0..MAX_OCCUPANCY."""

    now: int
    entries_today: int
    exits_today: int
    max_today: int
    capacity: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "entries_today": self.entries_today,
            "exits_today": self.exits_today,
            "max_today": self.max_today,
            "capacity": self.capacity,
        }


OCCUPANCY_FIELDS = ("now", "entries_today", "exits_today", "max_today", "capacity")


def parse_occupancy(value: object, where: str) -> Occupancy:
    """The heartbeat's ``occupancy`` object; ProtocolError naming the field. Every key is
    required (``capacity`` may be null)."""
    obj = need_object(value, where)
    _only_keys(obj, where, OCCUPANCY_FIELDS)
    missing = [name for name in OCCUPANCY_FIELDS if name not in obj]
    if missing:
        raise ProtocolError(f"{where}.{missing[0]}", "missing")

    def count(name: str) -> int:
        number = need_int(obj[name], f"{where}.{name}", 0, MAX_OCCUPANCY)
        assert number is not None
        return number

    return Occupancy(
        now=count("now"),
        entries_today=count("entries_today"),
        exits_today=count("exits_today"),
        max_today=count("max_today"),
        capacity=need_int(obj["capacity"], f"{where}.capacity", 1, MAX_OCCUPANCY, optional=True),
    )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``POST /v1/heartbeat``: the device's health and journal position.

    ``last_seq`` is the newest journal seq, ``synced_through_seq`` the highest seq below which
    every row is settled (synced or rejected), ``retained_from_seq`` the oldest seq still kept
    (older rows were pruned); 0 for each when the journal is empty (check-ins and passage events
    share the seqs). Ages are seconds. ``occupancy`` (protocol 3, optional: left out of the
    message when None) is the door's count of people in the gym."""

    software_version: str
    boot_id: str
    monotonic_ns: int
    device_time: datetime
    clock_quality: str
    backlog: int
    oldest_pending_age_s: float | None
    replica_version: int
    replica_checksum: str
    replica_count: int
    last_seq: int
    synced_through_seq: int
    retained_from_seq: int
    last_error: str | None = None
    anchors: tuple[Anchor, ...] = field(default=())
    occupancy: Occupancy | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "software_version": self.software_version,
            "boot_id": self.boot_id,
            "monotonic_ns": self.monotonic_ns,
            "device_time": utc_text(self.device_time),
            "clock_quality": self.clock_quality,
            "backlog": self.backlog,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "replica_version": self.replica_version,
            "replica_checksum": self.replica_checksum,
            "replica_count": self.replica_count,
            "last_seq": self.last_seq,
            "synced_through_seq": self.synced_through_seq,
            "retained_from_seq": self.retained_from_seq,
            "last_error": self.last_error,
            "anchors": [a.to_wire() for a in self.anchors],
        }
        if self.occupancy is not None:
            wire["occupancy"] = self.occupancy.to_wire()
        return wire


MAX_ANCHORS = 32


def parse_heartbeat(value: object) -> Heartbeat:
    obj = need_object(value, "")
    names = Heartbeat.__dataclass_fields__.keys()
    _only_keys(obj, "", names)
    age = obj.get("oldest_pending_age_s")
    if age is not None and (
        isinstance(age, bool)
        or not isinstance(age, int | float)
        or not math.isfinite(age)
        or age < 0
    ):
        raise ProtocolError("oldest_pending_age_s", "expected a number of seconds >= 0 or null")
    text = obj.get("replica_checksum")
    if not isinstance(text, str) or not _CHECKSUM.fullmatch(text):
        raise ProtocolError("replica_checksum", "expected 16 lowercase hex digits")
    boot_id = obj.get("boot_id")
    if not isinstance(boot_id, str) or not boot_id or not _BOOT_ID.fullmatch(boot_id):
        raise ProtocolError("boot_id", "expected a boot id (letters, digits, dashes)")
    raw_anchors = obj.get("anchors", [])
    if not isinstance(raw_anchors, list) or len(raw_anchors) > MAX_ANCHORS:
        raise ProtocolError("anchors", f"expected a list of at most {MAX_ANCHORS} anchors")
    last_error = obj.get("last_error")
    raw_occupancy = obj.get("occupancy")
    return Heartbeat(
        software_version=need_text(obj.get("software_version"), "software_version", 40),
        boot_id=boot_id,
        monotonic_ns=need_int(obj.get("monotonic_ns"), "monotonic_ns", 0, MAX_MONOTONIC_NS),
        device_time=parse_utc(obj.get("device_time"), "device_time"),
        clock_quality=need_choice(obj.get("clock_quality"), "clock_quality", CLOCK_QUALITIES),
        backlog=need_int(obj.get("backlog"), "backlog", 0, _BIG),
        oldest_pending_age_s=None if age is None else float(age),
        replica_version=need_int(obj.get("replica_version"), "replica_version", 0, _BIG),
        replica_checksum=text,
        replica_count=need_int(obj.get("replica_count"), "replica_count", 0, _BIG),
        last_seq=need_int(obj.get("last_seq"), "last_seq", 0, _BIG),
        synced_through_seq=need_int(obj.get("synced_through_seq"), "synced_through_seq", 0, _BIG),
        retained_from_seq=need_int(obj.get("retained_from_seq"), "retained_from_seq", 0, _BIG),
        last_error=None if last_error is None else need_text(last_error, "last_error", 500),
        anchors=tuple(parse_anchor(a, f"anchors[{n}]") for n, a in enumerate(raw_anchors)),
        occupancy=None if raw_occupancy is None else parse_occupancy(raw_occupancy, "occupancy"),
    )


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """The cloud's answer: its time (the device records an anchor), whether the device must take
    a fresh snapshot, and the seq from which to re-send retained check-ins (a cloud restored from
    a backup lost them), or None."""

    server_time: datetime
    resnapshot: bool = False
    resend_from_seq: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "server_time": utc_text(self.server_time),
            "resnapshot": self.resnapshot,
            "resend_from_seq": self.resend_from_seq,
        }


def parse_heartbeat_reply(value: object) -> HeartbeatReply:
    obj = need_object(value, "")
    _only_keys(obj, "", ("server_time", "resnapshot", "resend_from_seq"))
    return HeartbeatReply(
        server_time=parse_utc(obj.get("server_time"), "server_time"),
        resnapshot=need_bool(obj.get("resnapshot", False), "resnapshot"),
        resend_from_seq=need_int(
            obj.get("resend_from_seq"), "resend_from_seq", 1, _BIG, optional=True
        ),
    )


# -- enrolment -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolment:
    """``POST /v1/enrol``'s answer: who this device now is. ``token`` is the device's secret."""

    device_id: str
    token: str = field(repr=False)
    organization_id: str
    gym_id: str
    gym_name: str
    timezone: str
    server_time: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "token": self.token,
            "organization_id": self.organization_id,
            "gym_id": self.gym_id,
            "gym_name": self.gym_name,
            "timezone": self.timezone,
            "server_time": utc_text(self.server_time),
            "protocol": PROTOCOL_VERSION,
        }


_TOKEN = re.compile(r"[A-Za-z0-9_.-]{20,200}")


def parse_enrolment(value: object) -> Enrolment:
    obj = need_object(value, "")
    token = obj.get("token")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ProtocolError("token", "expected a device token")
    if obj.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError("protocol", f"the cloud speaks protocol {_short(obj.get('protocol'))}")
    return Enrolment(
        device_id=need_id(obj.get("device_id"), "device_id"),
        token=token,
        organization_id=need_id(obj.get("organization_id"), "organization_id"),
        gym_id=need_id(obj.get("gym_id"), "gym_id"),
        gym_name=need_text(obj.get("gym_name"), "gym_name"),
        timezone=need_text(obj.get("timezone"), "timezone", 64),
        server_time=parse_utc(obj.get("server_time"), "server_time"),
    )


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): where plain HTTP never
    leaves the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def parse_json(body: bytes, what: str) -> object:
    """JSON from a body, or ProtocolError saying the body is not JSON (with no excerpt of it)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError("", f"{what} is not valid JSON ({len(body)} bytes)") from None


@dataclass(frozen=True, slots=True)
class UploadEnvelope:
    """``POST /v1/checkins`` before its items are checked one by one: the raw items (each parsed
    with ``parse_journal_item`` so one bad item only rejects itself), the device's clock reading at
    sending time (boot id, monotonic ns) and the anchors it recorded."""

    items: tuple[object, ...]
    clock: tuple[str, int] | None
    anchors: tuple[Anchor, ...]


def parse_upload_envelope(value: object) -> UploadEnvelope:
    """Raises ProtocolError for a body that is not an upload at all (the cloud answers 400), and
    ``BatchTooLarge`` for more than ``MAX_BATCH_ITEMS`` items (413)."""
    obj = need_object(value, "")
    _only_keys(obj, "", ("items", "clock", "anchors"))
    items = obj.get("items")
    if not isinstance(items, list):
        raise ProtocolError("items", "expected a list of check-ins and events")
    if len(items) > MAX_BATCH_ITEMS:
        raise BatchTooLarge(len(items))
    clock = None
    if obj.get("clock") is not None:
        raw = need_object(obj["clock"], "clock")
        _only_keys(raw, "clock", ("boot_id", "monotonic_ns"))
        boot_id = raw.get("boot_id")
        if not isinstance(boot_id, str) or not boot_id or not _BOOT_ID.fullmatch(boot_id):
            raise ProtocolError("clock.boot_id", "expected a boot id (letters, digits, dashes)")
        clock = (
            boot_id,
            need_int(raw.get("monotonic_ns"), "clock.monotonic_ns", 0, MAX_MONOTONIC_NS),
        )
    raw_anchors = obj.get("anchors", [])
    if not isinstance(raw_anchors, list) or len(raw_anchors) > MAX_ANCHORS:
        raise ProtocolError("anchors", f"expected a list of at most {MAX_ANCHORS} anchors")
    anchors = tuple(parse_anchor(a, f"anchors[{n}]") for n, a in enumerate(raw_anchors))
    return UploadEnvelope(tuple(items), clock, anchors)


class BatchTooLarge(ProtocolError):
    """More items than ``MAX_BATCH_ITEMS`` in one upload (HTTP 413)."""

    def __init__(self, count: int) -> None:
        super().__init__("items", f"{count} items, more than {MAX_BATCH_ITEMS} in one upload")
        self.count = count
