"""Members (and optionally one membership each) from a CSV file: ``POST /admin/v1/members/import``.

Columns (a header line is required; order is free; unknown columns are refused):

| column | required | meaning |
| --- | --- | --- |
| ``member_id`` | no | update this member (or create it with this id); blank: a new member |
| ``first_name``, ``last_name`` | yes | |
| ``code`` | yes | the printed card code: 4-64 characters ``A-Z a-z 0-9 . _ -``, unique |
| ``status`` | no | ``ACTIVE`` (blank), ``EXPIRED`` or ``PAUSED`` |
| ``plan_id`` | no | an existing plan, for the membership |
| ``membership_type`` | with a membership | ``SUBSCRIPTION``, ``CLASS_PACK`` or ``PT``; blank: none |
| ``start_date``, ``end_date`` | start with a membership | ``YYYY-MM-DD`` |
| ``remaining_classes`` | no | an integer (class packs, PT) |
| ``membership_id`` | no | update this membership (or create it with this id): re-importing a file then changes nothing |

**All or nothing**: every line is checked first (fields, codes unique in the file and against
other members, plans and memberships that exist); if any line is wrong nothing is stored, and the
report lists every problem with its line number (the header is line 1). A correct file is stored
in one transaction with one version, so a device never sees half an import. ``dry_run`` checks
without storing.
"""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cloud import admin, db, tokens
from cloud.errors import Invalid
from sync.protocol import MEMBER_STATUSES, ProtocolError, make_row, utc_text

MAX_IMPORT_BYTES = 8 << 20
MAX_IMPORT_LINES = 50_000
# A large import changes the tables' size enough that the database's statistics need a refresh.
_ANALYZE_AFTER_LINES = 1000

MEMBER_COLUMNS = ("member_id", "first_name", "last_name", "code", "status")
MEMBERSHIP_COLUMNS = (
    "plan_id",
    "membership_type",
    "start_date",
    "end_date",
    "remaining_classes",
    "membership_id",
)
COLUMNS = MEMBER_COLUMNS + MEMBERSHIP_COLUMNS
REQUIRED = ("first_name", "last_name", "code")


@dataclass
class Line:
    """One data line: what it asks for, and what is wrong with it."""

    number: int
    member_id: str | None
    member: dict[str, Any]
    code: str
    membership_id: str | None
    membership: dict[str, Any] | None
    errors: list[tuple[str, str]] = field(default_factory=list)
    member_status: str = "created"
    membership_status: str | None = None


class ImportRejected(Invalid):
    """At least one line is wrong; nothing was stored. ``report`` is the per-line report."""

    def __init__(self, report: dict[str, Any]) -> None:
        problems = [
            (f"line {line['line']}: {e['field']}", e["problem"])
            for line in report["lines"]
            for e in line["errors"]
        ]
        super().__init__(problems[:20] or [("file", "rejected")])
        self.report = report

    def body(self) -> dict[str, object]:
        return {"error": self.code, "detail": self.detail, **self.report}


def _blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _int(value: str | None, name: str, errors: list[tuple[str, str]]) -> int | None:
    text = _blank(value)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        errors.append((name, "expected a whole number"))
        return None


def parse_lines(text: str) -> tuple[list[Line], list[tuple[str, str]]]:
    """The file's data lines with their own (file-independent) problems, and problems with the
    file as a whole (header, size). Pure."""
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        return [], [("header", "the file is empty: expected a header line")]
    reader.fieldnames = header
    unknown = [h for h in header if h not in COLUMNS]
    missing = [h for h in REQUIRED if h not in header]
    file_errors = [(f"header.{h}", "unknown column") for h in unknown]
    file_errors += [(f"header.{h}", "required column missing") for h in missing]
    if file_errors:
        return [], file_errors
    lines: list[Line] = []
    start = reader.line_num + 1
    for record in reader:
        number, start = start, reader.line_num + 1
        if len(lines) >= MAX_IMPORT_LINES:
            return [], [("file", f"more than {MAX_IMPORT_LINES} lines: split the file")]
        if None in record:
            lines.append(_broken(number, "more fields than columns in the header"))
            continue
        if not any((v or "").strip() for v in record.values()):
            continue  # a blank line
        lines.append(parse_line(number, record))
    return lines, []


def _broken(number: int, problem: str) -> Line:
    return Line(number, None, {"code_hash": None}, "", None, None, [("line", problem)])


def parse_line(number: int, record: dict[str, str | None]) -> Line:
    errors: list[tuple[str, str]] = []
    get = record.get
    member_id = _blank(get("member_id"))
    status = (_blank(get("status")) or "ACTIVE").upper()
    if status not in MEMBER_STATUSES:
        errors.append(("status", "expected ACTIVE, EXPIRED or PAUSED"))
    member = {
        "organization_id": "org",
        "first_name": _blank(get("first_name")),
        "last_name": _blank(get("last_name")),
        "status": status,
        "is_staff": False,
        "code_hash": None,
    }
    for name in ("first_name", "last_name"):
        if member[name] is None:
            errors.append((name, "required"))
    if not errors:
        try:
            make_row("member", member_id or "new", member)
        except ProtocolError as exc:
            errors.append((admin.field_path(exc.where), exc.problem))
    code = _blank(get("code")) or ""
    try:
        admin.card_code_hash(code, "00" * 32)
    except Invalid as exc:
        errors.extend(exc.fields)
    membership = None
    membership_id = _blank(get("membership_id"))
    wants = any(_blank(get(c)) for c in MEMBERSHIP_COLUMNS)
    if wants:
        membership = {
            "member_id": member_id or "new",
            "plan_id": _blank(get("plan_id")),
            "type": (_blank(get("membership_type")) or "").upper() or None,
            "start_date": _blank(get("start_date")),
            "end_date": _blank(get("end_date")),
            "remaining_classes": _int(get("remaining_classes"), "remaining_classes", errors),
        }
        if membership["type"] is None:
            errors.append(("membership_type", "required with a membership"))
        elif membership["start_date"] is None:
            errors.append(("start_date", "required with a membership"))
        else:
            try:
                make_row("membership", membership_id or "new", membership)
            except ProtocolError as exc:
                path = admin.field_path(exc.where)
                errors.append(("membership_type" if path == "type" else path, exc.problem))
    return Line(number, member_id, member, code, membership_id, membership, errors)


def _check_against_file(lines: list[Line]) -> None:
    seen_ids: dict[str, int] = {}
    seen_codes: dict[str, int] = {}
    seen_memberships: dict[str, int] = {}
    for line in lines:
        if line.member_id is not None:
            if line.member_id in seen_ids:
                line.errors.append(("member_id", f"also on line {seen_ids[line.member_id]}"))
            seen_ids.setdefault(line.member_id, line.number)
        if line.code:
            if line.code in seen_codes:
                line.errors.append(("code", f"also on line {seen_codes[line.code]}"))
            seen_codes.setdefault(line.code, line.number)
        if line.membership_id is not None:
            if line.membership_id in seen_memberships:
                where = seen_memberships[line.membership_id]
                line.errors.append(("membership_id", f"also on line {where}"))
            seen_memberships.setdefault(line.membership_id, line.number)


def import_members(
    tx: db.Tx, org_id: str, text: str, now: datetime, *, dry_run: bool = False
) -> dict[str, Any]:
    """Check every line, then store them all (or, with an error anywhere, nothing: ImportRejected
    carries the report). Returns the per-line report."""
    lines, file_errors = parse_lines(text)
    if file_errors:
        raise Invalid(file_errors)
    version = db.bump_version(tx, org_id)
    salt = bytes.fromhex(db.organization(tx, org_id)["code_salt"])  # type: ignore[index]
    _check_against_file(lines)
    for line in lines:
        if line.member_id is None:
            line.member_id = tokens.new_id("mbr")
        if line.membership is not None:
            line.membership["member_id"] = line.member_id
            if line.membership_id is None:
                line.membership_id = tokens.new_id("msh")
        with contextlib.suppress(Invalid):  # a bad code is already reported by parse_line
            line.member["code_hash"] = admin.card_code_hash(line.code, salt.hex())
        line.member["organization_id"] = org_id
    _check_against_database(tx, org_id, lines)

    report = _report(lines, applied=False, dry_run=dry_run)
    if any(line.errors for line in lines):
        raise ImportRejected(report)
    if not dry_run:
        _store(tx, org_id, lines, version, utc_text(now))
        report["applied"] = True
    return report


def _check_against_database(tx: db.Tx, org_id: str, lines: list[Line]) -> None:
    members = db.replica_rows_by_id(tx, "member", org_id, [ln.member_id or "" for ln in lines])
    holders = db.members_by_code_hash(
        tx, org_id, [ln.member["code_hash"] for ln in lines if ln.member["code_hash"]]
    )
    plan_ids = [
        ln.membership["plan_id"] for ln in lines if ln.membership and ln.membership["plan_id"]
    ]
    plans = db.replica_rows_by_id(tx, "plan", org_id, plan_ids)
    membership_ids = [ln.membership_id for ln in lines if ln.membership_id]
    memberships = db.replica_rows_by_id(tx, "membership", org_id, membership_ids)
    for line in lines:
        existing = members.get(line.member_id or "")
        if existing is not None and not existing["deleted"]:
            line.member_status = "updated"
        holder = holders.get(line.member["code_hash"] or "")
        if holder is not None and holder != line.member_id:
            line.errors.append(("code", f"already the card of member {holder}"))
        if line.membership is None:
            continue
        plan_id = line.membership["plan_id"]
        if plan_id is not None and (plan_id not in plans or plans[plan_id]["deleted"]):
            line.errors.append(("plan_id", f"no plan {plan_id}"))
        current = memberships.get(line.membership_id or "")
        line.membership_status = "created"
        if current is not None and not current["deleted"]:
            if current["member_id"] != line.member_id:
                owner = current["member_id"]
                line.errors.append(("membership_id", f"belongs to member {owner}"))
            line.membership_status = "updated"


def _store(tx: db.Tx, org_id: str, lines: list[Line], version: int, now: str) -> None:
    member_writes = []
    membership_writes = []
    columns = db.REPLICA_TABLES["member"].columns
    for line in lines:
        row = make_row("member", line.member_id or "", line.member)
        data = row.data or {}
        values = {c: data[c] for c in columns} | {"card_code": line.code}
        member_writes.append(db.RowWrite(None, row.id, values, row.row_hash()))
        if line.membership is not None:
            ms = make_row("membership", line.membership_id or "", line.membership)
            values = {c: (ms.data or {})[c] for c in db.REPLICA_TABLES["membership"].columns}
            membership_writes.append(db.RowWrite(None, ms.id, values, ms.row_hash()))
    db.upsert_replica_rows(tx, "member", org_id, member_writes, version=version, now=now)
    db.upsert_replica_rows(tx, "membership", org_id, membership_writes, version=version, now=now)
    if len(lines) >= _ANALYZE_AFTER_LINES:
        db.refresh_statistics(tx, ("member", "membership"))


def _report(lines: list[Line], *, applied: bool, dry_run: bool) -> dict[str, Any]:
    def count(attr: str, status: str) -> int:
        return sum(1 for ln in lines if getattr(ln, attr) == status and not ln.errors)

    return {
        "applied": applied,
        "dry_run": dry_run,
        "lines_total": len(lines),
        "lines_with_errors": sum(1 for ln in lines if ln.errors),
        "members_created": count("member_status", "created"),
        "members_updated": count("member_status", "updated"),
        "memberships_created": count("membership_status", "created"),
        "memberships_updated": count("membership_status", "updated"),
        "lines": [
            {
                "line": ln.number,
                "status": "error" if ln.errors else "ok",
                "member_id": ln.member_id,
                "member": ln.member_status,
                "membership_id": ln.membership_id if ln.membership is not None else None,
                "membership": ln.membership_status,
                "errors": [{"field": f, "problem": p} for f, p in ln.errors],
            }
            for ln in lines
        ],
    }
