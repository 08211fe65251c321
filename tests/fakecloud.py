"""A small in-memory cloud that follows docs/sync-protocol.md, for the device's tests.

It is served through ``httpx.MockTransport`` (no sockets), keeps every request it saw, and can be
told to misbehave: ``fail_next(path, ...)`` queues a canned answer (or a raised transport error)
for the next request to a path. Rows and their versions follow the contract's rules: one version
counter per organisation, bumped by every write; tombstones keep the version of their deletion;
``purge()`` forgets tombstones and makes older versions answer 410.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx

from sync.protocol import (
    CREATED,
    DUPLICATE,
    KIND_ORDER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REJECT_INVALID,
    REJECTED,
    Checkpoint,
    EventItem,
    HeartbeatReply,
    ProtocolError,
    UploadResult,
    checksum,
    item_id,
    make_row,
    parse_heartbeat,
    parse_journal_item,
    parse_upload_envelope,
    utc_text,
)

TOKEN = "ffd_" + "k" * 40
SALT = bytes(range(32))
ORG = "org-1"
START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Stored:
    version: int
    data: dict[str, Any] | None  # None: a tombstone


@dataclass
class Fault:
    path: str
    respond: Callable[[httpx.Request], httpx.Response]
    match: Callable[[httpx.Request], bool] | None = None


@dataclass
class FakeCloud:
    token: str = TOKEN
    salt: bytes = SALT
    now: datetime = START
    version: int = 0
    purged_version: int = 0
    rows: dict[tuple[str, str], Stored] = field(default_factory=dict)
    checkins: dict[str, tuple[dict[str, Any], int | None]] = field(default_factory=dict)
    # Door events (protocol 3) by id: (as sent, the version that gave a class back or None).
    events: dict[str, tuple[dict[str, Any], int | None]] = field(default_factory=dict)
    annulled: set[str] = field(default_factory=set)
    requests: list[httpx.Request] = field(default_factory=list)
    heartbeats: list[Any] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    codes: set[str] = field(default_factory=lambda: {"7KQ4-M2XD-9HVA"})
    resnapshot: bool = False
    resend_from_seq: int | None = None
    # A broken cloud that answers 304 even without If-None-Match (the protocol says 200 with a
    # checkpoint then).
    always_304: bool = False
    max_items: int = 500
    # Called with (kind, id, data) just before a snapshot page is answered: lets a test change
    # the cloud between pages.
    between_pages: Callable[[FakeCloud], None] | None = None

    # -- data ------------------------------------------------------------------------------------

    def put(self, kind: str, row_id: str, data: dict[str, Any]) -> int:
        """Create or change a row in its own version; returns the version."""
        row = make_row(kind, row_id, data)
        self.version += 1
        self.rows[(kind, row_id)] = Stored(self.version, row.data)
        return self.version

    def delete(self, kind: str, row_id: str) -> int:
        self.version += 1
        self.rows[(kind, row_id)] = Stored(self.version, None)
        return self.version

    def purge(self) -> None:
        """Forget every tombstone: versions before now answer 410."""
        self.rows = {k: v for k, v in self.rows.items() if v.data is not None}
        self.purged_version = self.version

    def live(self) -> list[tuple[str, str, dict[str, Any]]]:
        return sorted(
            ((k, i, s.data) for (k, i), s in self.rows.items() if s.data is not None),
            key=lambda r: (KIND_ORDER[r[0]], r[1]),
        )

    def checkpoint(self) -> Checkpoint:
        live = self.live()
        return Checkpoint(
            self.version, checksum(make_row(k, i, d).row_hash() for k, i, d in live), len(live)
        )

    def seed_gym(self, members: int = 3) -> None:
        """A plan, ``members`` members each with a subscription, one class pack, hours."""
        self.put("plan", "plan-full", {"name": "Full", "windows": []})
        for n in range(members):
            self.put(
                "member",
                f"m{n}",
                {
                    "organization_id": ORG,
                    "first_name": f"First{n}",
                    "last_name": "Last",
                    "status": "ACTIVE",
                    "is_staff": False,
                    "code_hash": f"{n:064x}",
                },
            )
            self.put(
                "membership",
                f"ms{n}",
                {
                    "member_id": f"m{n}",
                    "plan_id": "plan-full",
                    "type": "SUBSCRIPTION",
                    "start_date": "2026-01-01",
                    "end_date": "2026-12-31",
                    "remaining_classes": None,
                },
            )
        self.put(
            "membership",
            "pack0",
            {
                "member_id": "m0",
                "plan_id": None,
                "type": "CLASS_PACK",
                "start_date": "2026-01-01",
                "end_date": None,
                "remaining_classes": 5,
            },
        )
        self.put("hours", "h-mon", {"weekday": 0, "open_minute": 360, "close_minute": 1320})
        self.put(
            "closure",
            "c-xmas",
            {"start_date": "2026-12-25", "end_date": "2026-12-26", "reason": "Christmas"},
        )

    # -- fault injection -------------------------------------------------------------------------

    def fail_next(
        self,
        path: str,
        status: int = 503,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        protocol: str | None = str(PROTOCOL_VERSION),
        raise_error: Exception | None = None,
        times: int = 1,
        match: Callable[[httpx.Request], bool] | None = None,
    ) -> None:
        """The next ``times`` requests to ``path`` (for which ``match`` is true, if given) get
        this answer, or raise ``raise_error``."""

        def respond(request: httpx.Request) -> httpx.Response:
            if raise_error is not None:
                raise raise_error
            answer_headers = dict(headers or {})
            if protocol is not None:
                answer_headers[PROTOCOL_HEADER] = protocol
            content = body if body is not None else json.dumps({"error": "injected"}).encode()
            return httpx.Response(status, content=content, headers=answer_headers)

        for _ in range(times):
            self.faults.append(Fault(path, respond, match))

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)

    # -- HTTP ------------------------------------------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        for fault in self.faults:
            if fault.path == path and (fault.match is None or fault.match(request)):
                self.faults.remove(fault)
                return fault.respond(request)
        if request.headers.get(PROTOCOL_HEADER) != str(PROTOCOL_VERSION):
            return self._json(
                426, {"error": "unsupported_protocol", "supported": [PROTOCOL_VERSION]}
            )
        if path == "/v1/enrol":
            return self._enrol(request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._json(401, {"error": "unauthorized"})
        query = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        if path == "/v1/replica/snapshot":
            return self._snapshot(query)
        if path == "/v1/replica/changes":
            return self._changes(query, request.headers.get("if-none-match"))
        if path == "/v1/checkins":
            return self._checkins(json.loads(request.content))
        if path == "/v1/heartbeat":
            return self._heartbeat(json.loads(request.content))
        return self._json(404, {"error": "not_found"})

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.Response(
            status, json=obj, headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION), **(headers or {})}
        )

    def _enrol(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("code") not in self.codes:
            return self._json(403, {"error": "enrolment_refused"})
        self.codes.discard(body["code"])
        return self._json(
            201,
            {
                "device_id": "dev_1",
                "token": self.token,
                "organization_id": ORG,
                "gym_id": "gym-1",
                "gym_name": "Main Street Gym",
                "timezone": "Europe/Berlin",
                "server_time": utc_text(self.now),
                "protocol": PROTOCOL_VERSION,
            },
        )

    def _snapshot(self, query: dict[str, str]) -> httpx.Response:
        if self.between_pages is not None and "after" in query:
            self.between_pages(self)
        limit = int(query.get("limit", "1000"))
        live = self.live()
        after = query.get("after")
        if after is not None:
            kind, _, row_id = after.partition(":")
            key = (KIND_ORDER[kind], row_id)
            live = [r for r in live if (KIND_ORDER[r[0]], r[1]) > key]
        page, rest = live[:limit], live[limit:]
        return self._json(
            200,
            {
                "version": self.version,
                "rows": [{"kind": k, "id": i, "data": d} for k, i, d in page],
                "next": f"{page[-1][0]}:{page[-1][1]}" if rest else None,
                "code_salt": self.salt.hex(),
            },
        )

    def _changes(self, query: dict[str, str], if_none_match: str | None) -> httpx.Response:
        since = int(query["since"])
        limit = int(query.get("limit", "1000"))
        after = query.get("after")
        if since > self.version or since < self.purged_version:
            return self._json(410, {"error": "cursor_expired"})
        etag = {"ETag": f'"v{self.version}"'}
        idle = self.always_304 or if_none_match == f'"v{since}"'
        if after is None and since == self.version and idle:
            return httpx.Response(304, headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION), **etag})
        changed = sorted(
            ((s.version, KIND_ORDER[k], i, k, s.data) for (k, i), s in self.rows.items()),
        )
        changed = [c for c in changed if c[0] > since]
        if after is not None:
            v, rank, row_id = after.split(":", 2)
            changed = [c for c in changed if (c[0], c[1], c[2]) > (int(v), int(rank), row_id)]
        page, rest = changed[:limit], changed[limit:]
        rows = []
        for version, _rank, row_id, kind, data in page:
            row: dict[str, Any] = {"kind": kind, "id": row_id, "version": version}
            if data is None:
                row["deleted"] = True
            else:
                row["data"] = data
            rows.append(row)
        last = page[-1] if page else None
        return self._json(
            200,
            {
                "since": since,
                "rows": rows,
                "next": f"{last[0]}:{last[1]}:{last[2]}" if rest and last else None,
                "checkpoint": None if rest else self.checkpoint().to_wire(),
                "code_salt": self.salt.hex(),
            },
            etag,
        )

    def _checkins(self, body: Any) -> httpx.Response:
        try:
            envelope = parse_upload_envelope(body)
        except ProtocolError as exc:
            return self._json(400, {"error": "bad_request", "detail": str(exc)})
        if len(envelope.items) > self.max_items:
            return self._json(413, {"error": "batch_too_large", "max_items": self.max_items})
        self.uploads.append(body)
        results = []
        for n, raw in enumerate(envelope.items):
            try:
                item = parse_journal_item(raw, f"items[{n}]")
            except ProtocolError as exc:
                results.append(UploadResult(item_id(raw), REJECTED, REJECT_INVALID, str(exc)))
                continue
            if isinstance(item, EventItem):
                results.append(self._event(item, raw))
                continue
            if item.id in self.checkins:
                results.append(UploadResult(item.id, DUPLICATE, version=self.checkins[item.id][1]))
                continue
            version = None
            stored = self.rows.get(("membership", item.membership_id or ""))
            if (
                item.decision == "granted"
                and item.classes_used > 0
                and stored is not None
                and stored.data is not None
                and stored.data["type"] in ("CLASS_PACK", "PT")
                and stored.data["remaining_classes"] is not None
            ):
                data = dict(stored.data)
                data["remaining_classes"] -= item.classes_used
                version = self.put("membership", item.membership_id, data)
            self.checkins[item.id] = (raw, version)
            results.append(UploadResult(item.id, CREATED, version=version))
        return self._json(
            200, {"results": [r.to_wire() for r in results], "server_time": utc_text(self.now)}
        )

    def _event(self, item: EventItem, raw: dict[str, Any]) -> UploadResult:
        """A door event stored once by id; an ``annulled`` of a check-in that spent a class gives
        it back in a version of its own (the reference cloud's rule, without its corners)."""
        if item.id in self.events:
            return UploadResult(item.id, DUPLICATE, version=self.events[item.id][1])
        version = None
        held = self.checkins.get(item.checkin_id or "")
        if item.kind == "annulled" and held is not None and item.checkin_id not in self.annulled:
            self.annulled.add(item.checkin_id or "")
            charged, membership = held[1], held[0]["membership_id"]
            stored = self.rows.get(("membership", membership or ""))
            if charged is not None and stored is not None and stored.data is not None:
                data = dict(stored.data)
                data["remaining_classes"] += held[0]["classes_used"]
                version = self.put("membership", membership, data)
        self.events[item.id] = (raw, version)
        return UploadResult(item.id, CREATED, version=version)

    def _heartbeat(self, body: Any) -> httpx.Response:
        beat = parse_heartbeat(body)
        self.heartbeats.append(beat)
        reply = HeartbeatReply(self.now, self.resnapshot, self.resend_from_seq)
        self.resnapshot = False
        self.resend_from_seq = None
        return self._json(200, reply.to_wire())

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
