"""What devices send: enrolment, authentication, uploads of check-ins and passage events, and
heartbeats.

Uploads are idempotent by id: each item is inserted with ``ON CONFLICT DO NOTHING`` and only the
rows actually inserted have side effects (a class-pack or PT balance goes down for a check-in, or
back up for an ``annulled`` event; an ``entry`` event confirms its check-in), in the same
transaction, stamped with a fresh organisation version, so a batch sent three times changes the
balance once. One bad item is rejected alone and recorded; it never fails the batch.

A kiosk enrolled again (a new device id, the same journal) re-sends rows it delivered as the
earlier device: an item whose id the same organisation and gym already holds under a revoked
device, or with the same seq, door, boot and monotonic time, is that row and answers
``duplicate``; the earlier device is then recorded as the new one's predecessor, and the
heartbeat's re-send check counts the seqs held under predecessors too.

Functions taking a ``Tx`` run inside the caller's transaction and touch nothing else; ``now`` is
the request's arrival time (the app's injectable clock), the time of the anchor from ``clock``.
The HTTP layer stamps the answer's ``server_time`` when it answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cloud import db, placement, replica, tokens
from cloud.errors import EnrolmentRefused, Unauthorized
from cloud.replica import row_data
from sync.protocol import (
    CREATED,
    DUPLICATE,
    EVENTS_WITH_CHECKIN,
    REJECT_ID_CONFLICT,
    REJECT_INVALID,
    REJECTED,
    Anchor,
    Enrolment,
    EventItem,
    Heartbeat,
    HeartbeatReply,
    ProtocolError,
    UploadEnvelope,
    UploadItem,
    UploadResult,
    item_id,
    make_row,
    need_object,
    need_text,
    parse_journal_item,
    parse_utc,
    utc_text,
)

# A request rewrites the device's last_seen_at only when it is older than this, so an idle poll
# stays a read. Every heartbeat writes it anyway (the heartbeat is a write), once a round, so a
# healthy device at the default 30 s interval never pays for it; this bounds how stale it gets for
# a device whose heartbeats fail, or whose rounds are further apart.
LAST_SEEN_EVERY = timedelta(seconds=120)
# A heartbeat whose journal check would count more seqs than this (a door's first heartbeat with
# a long journal, after an upgrade or a re-enrolment; a door restored from an old backup) counts
# them in a read transaction first, outside the write transaction (SQLite's single writer would
# otherwise wait on the count), and only uses the count if nothing was removed meanwhile. Counting
# a few thousand index entries takes about a millisecond.
COUNT_IN_WRITE_MAX_SEQS = 2_000
_BIG = 2**63 - 1


@dataclass(frozen=True, slots=True)
class JournalSpan:
    """Seqs ``low`` .. ``high`` of a device's journal that the cloud was found to hold (under
    the device or its earlier enrolments); empty unless ``1 <= low <= high``."""

    low: int = 0
    high: int = 0

    @property
    def empty(self) -> bool:
        return not 1 <= self.low <= self.high

    def unverified(self, retained_from: int, synced_through: int) -> list[tuple[int, int]]:
        """The parts of [retained_from, synced_through] outside this span, lowest first (none,
        one or two closed ranges): what a check must count. Nothing for an empty journal
        (``retained_from`` 0) or range."""
        low, high = max(retained_from, 1), synced_through
        if retained_from == 0 or high < low:
            return []
        if self.empty or self.high < low or self.low > high:
            return [(low, high)]
        parts = []
        if low < self.low:
            parts.append((low, self.low - 1))
        if self.high < high:
            parts.append((self.high + 1, high))
        return parts

    def after(self, retained_from: int, synced_through: int, missing: int | None) -> JournalSpan:
        """The span once a check of [retained_from, synced_through] found ``missing`` the first
        seq not held (None: none): everything in the range below it is held. Joined to this span
        when they touch; otherwise the one reaching higher is kept (heartbeats move up)."""
        low = max(retained_from, 1)
        high = synced_through if missing is None else missing - 1
        if retained_from == 0 or high < low:
            return self
        if self.empty:
            return JournalSpan(low, high)
        if low <= self.high + 1 and self.low <= high + 1:
            return JournalSpan(min(low, self.low), max(high, self.high))
        return JournalSpan(low, high) if high >= self.high else self


@dataclass(frozen=True, slots=True)
class DeviceAuth:
    """The device a token belongs to, and its organisation's replica version and purged
    version as they were when it was authenticated (one statement read both), with the
    heartbeat's record of its journal: the span found held and ``journal_losses``, how many
    held rows were removed since enrolment (cloud/migrations.py, migration 6)."""

    id: str
    organization_id: str
    gym_id: str
    resnapshot_requested: bool
    last_seen_at: str | None
    org_version: int = 0
    org_purged_version: int = 0
    journal_span: JournalSpan = JournalSpan()
    journal_losses: int = 0


# -- enrolment and authentication ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrolRequest:
    code: str
    name: str
    software_version: str | None


def parse_enrol_request(value: object) -> EnrolRequest:
    """``{"code", "name", "software_version"}``; name and version are optional."""
    obj = need_object(value, "")
    extra = sorted(set(obj) - {"code", "name", "software_version"})
    if extra:
        raise ProtocolError(extra[0], "unknown field")
    code = need_text(obj.get("code"), "code", 64)
    if not code.strip():
        raise ProtocolError("code", "empty")
    name = obj.get("name")
    version = obj.get("software_version")
    return EnrolRequest(
        code=code,
        name="kiosk" if name is None else need_text(name, "name") or "kiosk",
        software_version=None if version is None else need_text(version, "software_version", 40),
    )


def enrol(tx: db.Tx, request: EnrolRequest, now: datetime) -> Enrolment:
    """Spend a single-use enrolment code on a new device; EnrolmentRefused for an unknown, used
    or expired code (one answer for all three)."""
    device_id = tokens.new_id("dev")
    token = tokens.new_device_token()
    stamp = utc_text(now)
    claimed = db.claim_enrolment_code(
        tx, tokens.enrolment_code_hash(request.code), stamp, device_id
    )
    if claimed is None:
        raise EnrolmentRefused("unknown, used or expired enrolment code")
    org_id, gym_id = claimed
    gym = db.gym(tx, org_id, gym_id)
    if gym is None:
        raise EnrolmentRefused("unknown, used or expired enrolment code")
    db.insert_device(
        tx,
        device_id,
        org_id,
        gym_id,
        request.name,
        tokens.sha256_hex(token),
        request.software_version,
        stamp,
    )
    return Enrolment(
        device_id=device_id,
        token=token,
        organization_id=org_id,
        gym_id=gym_id,
        gym_name=gym["name"],
        timezone=gym["timezone"],
        server_time=now,
    )


def authenticate_device(database: db.Database, token: str | None, now: datetime) -> DeviceAuth:
    """The device holding ``token``; Unauthorized for a missing, unknown or revoked token. One
    statement (no transaction around it), which also reads the organisation's version. Keeps
    ``last_seen_at`` current to within LAST_SEEN_EVERY (when it is older, one more statement,
    on its own)."""
    if not token:
        raise Unauthorized("missing bearer token")
    with database.single() as tx:
        device = _device_auth(db.device_by_token(tx, tokens.sha256_hex(token)))
        if _stale(device, now):
            # Its own statement too: a time seen needs no consistency with the read (the later
            # write wins, and any of them is recent), so no transaction around the two.
            db.touch_device(tx, device.id, utc_text(now))
    return device


def authenticate(tx: db.Tx, token: str | None, now: datetime, *, touch: bool = True) -> DeviceAuth:
    """``authenticate_device`` inside the caller's (write) transaction, so a request's
    authentication costs no transaction of its own: the same answers and Unauthorized
    messages, the device's ``last_seen_at`` kept the same way (in ``tx``; not with ``touch``
    False, for a caller that writes it anyway). The organisation's version is read by the
    request's first statement, in its snapshot."""
    if not token:
        raise Unauthorized("missing bearer token")
    device = _device_auth(db.device_by_token(tx, tokens.sha256_hex(token)))
    if touch and _stale(device, now):
        db.touch_device(tx, device.id, utc_text(now))
    return device


def _device_auth(row: dict[str, Any] | None) -> DeviceAuth:
    if row is None or row["revoked_at"] is not None:
        raise Unauthorized("unknown or revoked device token: enrol the device again")
    return DeviceAuth(
        id=row["id"],
        organization_id=row["organization_id"],
        gym_id=row["gym_id"],
        resnapshot_requested=row["resnapshot_requested"],
        last_seen_at=row["last_seen_at"],
        org_version=int(row["org_version"]),
        org_purged_version=int(row["org_purged_version"]),
        journal_span=JournalSpan(
            int(row["journal_verified_from"]), int(row["journal_verified_seq"])
        ),
        journal_losses=int(row["journal_losses"]),
    )


def _stale(device: DeviceAuth, now: datetime) -> bool:
    seen = device.last_seen_at
    return seen is None or seen < utc_text(now - LAST_SEEN_EVERY)


# -- anchors and placement -------------------------------------------------------------------------


def record_anchors(tx: db.Tx, device_id: str, anchors: Iterable[Anchor]) -> set[str]:
    """Store anchors (skipping any within ANCHOR_SPACING_NS of a stored one of the same boot, or
    of one stored just before it from this list); returns the boots that got a new anchor. One
    statement looks for all of them, one more stores the new ones (none when none is new)."""
    spacing = placement.ANCHOR_SPACING_NS
    # A fixed order, so two requests storing the same anchors cannot deadlock each other.
    ordered = sorted(anchors, key=lambda a: (a.boot_id, a.monotonic_ns))
    near = db.anchors_near(tx, device_id, [(a.boot_id, a.monotonic_ns) for a in ordered], spacing)
    new: list[Anchor] = []
    for a, stored_near in zip(ordered, near, strict=True):
        if stored_near:
            continue
        if (
            new
            and new[-1].boot_id == a.boot_id
            and a.monotonic_ns - new[-1].monotonic_ns <= spacing
        ):
            continue  # near the one just taken from this list (sorted: the nearest of them)
        new.append(a)
    db.insert_anchors(
        tx, device_id, [(a.boot_id, a.monotonic_ns, utc_text(a.server_time)) for a in new]
    )
    return {a.boot_id for a in new}


def _anchors(tx: db.Tx, device_id: str, boot_id: str, low: int, high: int) -> list[Anchor]:
    return [
        Anchor(boot_id, mono, parse_utc(text, "server_time"))
        for mono, text in db.anchors_around(tx, device_id, boot_id, low, high)
    ]


def replace_unanchored(tx: db.Tx, device_id: str, boots: Iterable[str]) -> int:
    """Place again the check-ins and passage events of these boots that were placed without an
    anchor; returns how many were moved."""
    moved = 0
    for boot in sorted(boots):
        unanchored = db.unanchored_journal(tx, device_id, boot)
        for table in db.JOURNAL_TABLES:
            pending = unanchored[table]
            if not pending:
                continue
            monos = [mono for _, mono in pending]
            anchors = _anchors(tx, device_id, boot, min(monos), max(monos))
            updates = []
            for row_id, mono in pending:
                placed = placement.anchored_time(boot, mono, anchors)
                if placed is not None:
                    updates.append((utc_text(placed), placement.ANCHORED, row_id))
            db.set_placements(tx, updates, table)
            moved += len(updates)
    return moved


# -- check-in and event uploads --------------------------------------------------------------------

JournalItem = UploadItem | EventItem


def _raw_seq(raw: object) -> int | None:
    seq = raw.get("seq") if isinstance(raw, dict) else None
    if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= _BIG:
        return seq
    return None


class _BatchVersion:
    """The organisation's version lock and at most one new version per upload: the balances a
    batch lowers (class uses) and raises (annulments) are all stamped with it."""

    def __init__(self, tx: db.Tx, org_id: str) -> None:
        self._tx = tx
        self._org = org_id
        self._locked = False
        self._version: int | None = None

    def lock(self) -> None:
        """Hold the version lock until commit (taking no version yet)."""
        if not self._locked:
            db.lock_version(self._tx, self._org)
            self._locked = True

    def take(self) -> int:
        """The batch's new version (bumped the first time; the lock is held from then on)."""
        if self._version is None:
            self._version = db.bump_version(self._tx, self._org)
            self._locked = True
        return self._version


def receive_checkins(
    tx: db.Tx, device: DeviceAuth, envelope: UploadEnvelope, now: datetime
) -> list[UploadResult]:
    """Store a batch of check-ins and passage events; one result per item, in order
    (docs/sync-protocol.md, ``POST /v1/checkins``).

    Order of work, all in ``tx``: anchors; check-ins and events inserted by id (only the rows
    inserted now have effects); new check-ins that an ``entry`` or ``annulled`` event already
    names (sent earlier, or in this batch) are confirmed or annulled at once, and an annulled one
    spends nothing; the remaining class uses lower balances; new ``annulled`` events annul their
    check-in (one conditional UPDATE: exactly once) and give back the classes it had spent, at
    the batch's version; new ``entry`` events confirm theirs. An event names a check-in of this
    device or of its earlier enrolments only (another door's check-in is never touched)."""
    stamp = utc_text(now)
    org = device.organization_id
    results: list[UploadResult | None] = [None] * len(envelope.items)
    rejections: list[tuple[Any, ...]] = []
    items: dict[str, tuple[int, JournalItem]] = {}  # first occurrence of each id
    repeats: list[tuple[int, str]] = []  # later occurrences in the same batch
    for n, raw in enumerate(envelope.items):
        try:
            item = parse_journal_item(raw, f"items[{n}]")
        except ProtocolError as exc:
            detail = str(exc)[:500]
            results[n] = UploadResult(item_id(raw), REJECTED, REJECT_INVALID, detail)
            rejections.append(
                (org, device.id, item_id(raw), _raw_seq(raw), REJECT_INVALID, detail, stamp)
            )
            continue
        if item.id in items:
            repeats.append((n, item.id))
        else:
            items[item.id] = (n, item)

    # Anchors first, so this batch's items are placed with the anchor of this very request.
    anchors = list(envelope.anchors)
    if envelope.clock is not None:
        anchors.append(Anchor(envelope.clock[0], envelope.clock[1], now))
    fresh_boots = record_anchors(tx, device.id, anchors)

    placed = _place(tx, device, [item for _, item in items.values()])
    checkins = {i: it for i, (_, it) in items.items() if isinstance(it, UploadItem)}
    events = {i: it for i, (_, it) in items.items() if isinstance(it, EventItem)}
    # id order: concurrent batches lock rows in the same order
    checkin_rows = sorted(_checkin_row(c, device, *placed[c.id], stamp) for c in checkins.values())
    event_rows = sorted(_event_row(e, device, *placed[e.id], stamp) for e in events.values())
    created = db.insert_checkins(tx, checkin_rows) if checkin_rows else set()
    created_events = db.insert_events(tx, event_rows) if event_rows else set()
    holders = db.checkin_holders(tx, [i for i in checkins if i not in created])
    holders.update(db.event_holders(tx, [i for i in events if i not in created_events]))

    # Who holds what is settled before any effect: an event may name a check-in this kiosk sent
    # under an earlier enrolment, recognised just now.
    earlier: set[str] = set()
    held_results: dict[str, UploadResult] = {}
    for row_id, (_, item) in items.items():
        if row_id in created or row_id in created_events:
            continue
        held = holders.get(row_id)
        if held is not None and held["device_id"] == device.id:
            held_results[row_id] = UploadResult(row_id, DUPLICATE, None, "", held["effect_version"])
        elif held is not None and _earlier_enrolment(held, item, device):
            held_results[row_id] = UploadResult(row_id, DUPLICATE, None, "", held["effect_version"])
            earlier.add(held["device_id"])
        else:
            what = "check-in" if isinstance(item, UploadItem) else "event"
            detail = f"another device's {what} has this id"
            held_results[row_id] = UploadResult(row_id, REJECTED, REJECT_ID_CONFLICT, detail)
            code = REJECT_ID_CONFLICT
            rejections.append((org, device.id, row_id, item.seq, code, detail, stamp))
    db.link_predecessors(tx, device.id, earlier, stamp)

    version = _BatchVersion(tx, org)
    owners = _Owners(tx, device.id)
    new_events = sorted((events[i] for i in created_events), key=lambda e: e.seq)
    resolving = [e for e in new_events if e.kind in EVENTS_WITH_CHECKIN]
    spending = _resolve_on_arrival(tx, [checkins[i] for i in created], owners)
    effects = _apply_balances(tx, device, spending, stamp, version)
    effects.update(_apply_annulments(tx, device, resolving, owners, stamp, version))
    entries = [e.checkin_id or "" for e in resolving if e.kind == "entry"]
    if entries:
        db.confirm_checkins(tx, entries, owners.ids())

    for row_id, (n, _) in items.items():
        if row_id in created or row_id in created_events:
            results[n] = UploadResult(row_id, CREATED, None, "", effects.get(row_id))
        else:
            results[n] = held_results[row_id]
    for n, row_id in repeats:
        first = results[items[row_id][0]]
        assert first is not None
        status = DUPLICATE if first.status == CREATED else first.status
        results[n] = UploadResult(row_id, status, first.code, first.detail, first.version)

    db.insert_rejections(tx, rejections)
    replace_unanchored(tx, device.id, fresh_boots)
    return [r for r in results if r is not None]


def receive_upload(
    tx: db.Tx, token: str | None, envelope: UploadEnvelope, now: datetime
) -> list[UploadResult]:
    """``receive_checkins`` for the device holding ``token``, authenticated in the same
    transaction (``authenticate``: Unauthorized for a missing, unknown or revoked token)."""
    return receive_checkins(tx, authenticate(tx, token, now), envelope, now)


def _place(
    tx: db.Tx, device: DeviceAuth, items: Sequence[JournalItem]
) -> dict[str, tuple[str, str]]:
    """{item id: (occurred_at text, time source)}: each item placed in time from the anchors of
    its boot (docs/sync-protocol.md, "Time placement")."""
    by_boot: dict[str, list[JournalItem]] = defaultdict(list)
    for item in items:
        by_boot[item.boot_id].append(item)
    out: dict[str, tuple[str, str]] = {}
    for boot, boot_items in by_boot.items():
        monos = [i.monotonic_ns for i in boot_items]
        boot_anchors = _anchors(tx, device.id, boot, min(monos), max(monos))
        for item in boot_items:
            moment, source = placement.place(
                item.boot_id, item.monotonic_ns, item.wall_time, item.clock_quality, boot_anchors
            )
            out[item.id] = (utc_text(moment), source)
    return out


class _Owners:
    """The devices whose check-ins this device's events may name: itself and its earlier
    enrolments (read once, when first needed, after this batch linked any it recognised)."""

    def __init__(self, tx: db.Tx, device_id: str) -> None:
        self._tx = tx
        self._device = device_id
        self._ids: list[str] | None = None

    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = [self._device, *db.predecessors(self._tx, self._device)]
        return self._ids


def _resolve_on_arrival(
    tx: db.Tx, created: Sequence[UploadItem], owners: _Owners
) -> list[UploadItem]:
    """New check-ins that an ``entry`` or ``annulled`` event of this kiosk already names are
    confirmed or annulled now (an event follows its check-in in the journal, but may come in the
    same batch); returns the new check-ins that may spend a class (the granted ones not
    annulled). One indexed query, which usually finds nothing."""
    granted = [c for c in created if c.decision == "granted"]
    if not granted:
        return []
    named = db.events_naming(tx, [c.id for c in granted])
    if not named:
        return granted
    mine = set(owners.ids())
    annulled = sorted({c for c, kind, dev in named if kind == "annulled" and dev in mine})
    confirmed = sorted({c for c, kind, dev in named if kind == "entry" and dev in mine})
    if annulled:
        db.mark_annulled_on_arrival(tx, annulled)
    if confirmed:
        db.confirm_checkins(tx, confirmed, owners.ids())
    gone = set(annulled)
    return [c for c in granted if c.id not in gone]


def _earlier_enrolment(held: dict[str, Any], item: JournalItem, device: DeviceAuth) -> bool:
    """Whether a stored row with the item's id is this kiosk's own, sent when it was enrolled as
    another device: same organisation and gym, and that device is revoked or the row is the same
    journal row (seq, door, boot and monotonic time)."""
    if (held["organization_id"], held["gym_id"]) != (device.organization_id, device.gym_id):
        return False
    same_row = (
        int(held["seq"]) == item.seq
        and held["door_id"] == item.door_id
        and held["boot_id"] == item.boot_id
        and int(held["monotonic_ns"]) == item.monotonic_ns
    )
    return bool(held["revoked"]) or same_row


def _checkin_row(
    item: UploadItem, device: DeviceAuth, occurred_at: str, source: str, received_at: str
) -> tuple[Any, ...]:
    """A check-in in db.CHECKIN_COLUMNS order."""
    return (
        item.id,
        device.organization_id,
        device.gym_id,
        device.id,
        item.seq,
        item.door_id,
        item.decision,
        item.reason,
        item.member_id,
        item.membership_id,
        item.classes_used,
        item.replica_version,
        utc_text(item.wall_time),
        item.boot_id,
        item.monotonic_ns,
        item.clock_quality,
        occurred_at,
        source,
        received_at,
        item.pass_id,
    )


def _event_row(
    item: EventItem, device: DeviceAuth, occurred_at: str, source: str, received_at: str
) -> tuple[Any, ...]:
    """A passage event in db.EVENT_COLUMNS order."""
    return (
        item.id,
        device.organization_id,
        device.gym_id,
        device.id,
        item.seq,
        item.door_id,
        item.kind,
        item.checkin_id,
        utc_text(item.wall_time),
        item.boot_id,
        item.monotonic_ns,
        item.clock_quality,
        occurred_at,
        source,
        received_at,
    )


def _apply_balances(
    tx: db.Tx,
    device: DeviceAuth,
    created: Sequence[UploadItem],
    stamp: str,
    batch: _BatchVersion,
) -> dict[str, int]:
    """Lower class-pack/PT balances for newly created granted check-ins that used classes; one
    new version for the batch. Returns {check-in id: that version}. A balance below zero is kept
    and the check-in that took it there is flagged as an overdraft."""
    spending = [
        i for i in created if i.decision == "granted" and i.classes_used > 0 and i.membership_id
    ]
    if not spending:
        return {}
    org = device.organization_id
    wanted = [i.membership_id or "" for i in spending]
    # A first, unlocked look, so a batch that spends nothing payable takes no version...
    if not _payable(spending, db.replica_rows_by_id(tx, "membership", org, wanted)):
        return {}
    # ...then the organisation's version lock, held until commit by every writer of replica rows,
    # and only then the balances: a concurrent upload spending the same pack has committed by now
    # (READ COMMITTED reads its balance), so no decrement is lost and the row hash is computed
    # from the row as stored.
    version = batch.take()
    found = db.replica_rows_by_id(tx, "membership", org, wanted)
    payable = _payable(spending, found)
    paying = _ids(payable)
    balances = {mid: int(found[mid]["remaining_classes"]) for mid in paying}
    effects: dict[str, int] = {}
    marks = []
    for item in sorted(payable, key=lambda i: i.seq):
        mid = item.membership_id or ""
        balances[mid] -= item.classes_used
        effects[item.id] = version
        marks.append((version, balances[mid] < 0, item.id))
    for mid in sorted(paying):
        _store_balance(tx, org, found[mid], balances[mid], version, stamp)
    db.mark_checkin_effects(tx, marks)
    return effects


def _apply_annulments(
    tx: db.Tx,
    device: DeviceAuth,
    events: Sequence[EventItem],
    owners: _Owners,
    stamp: str,
    batch: _BatchVersion,
) -> dict[str, int]:
    """Annul the check-ins that newly created ``annulled`` events name and give back the classes
    they spent (their ``effect_version`` says a balance went down for them), at the batch's
    version. Returns {event id: that version} for the annulments that gave a class back.

    Exactly once: only events inserted now get here, and ``db.annul_checkin`` changes a check-in
    only while it is not annulled, so a re-sent event, a second annulment of the same check-in
    or a check-in annulled on arrival gives nothing back. A membership deleted since keeps
    nothing. Overdraft flags follow the balance: of the membership's flagged check-ins, at most
    as many as it is below zero stay flagged (the newest ones covered are cleared)."""
    annulments = [e for e in events if e.kind == "annulled"]
    if not annulments:
        return {}
    org = device.organization_id
    # The version lock before the check-ins: every writer of balances takes it first, so an
    # annulment and a class use of the same membership never wait on each other's rows.
    batch.lock()
    returning: dict[str, int] = defaultdict(int)
    by_event: dict[str, str] = {}
    for event in annulments:
        row = db.annul_checkin(tx, event.checkin_id or "", owners.ids())
        if row is None:
            continue
        used = int(row["classes_used"])
        mid = row["membership_id"]
        if row["decision"] == "granted" and row["effect_version"] is not None and used > 0 and mid:
            returning[mid] += used
            by_event[event.id] = mid
    if not returning:
        return {}
    found = db.replica_rows_by_id(tx, "membership", org, list(returning))
    refunded = {
        mid
        for mid in returning
        if (m := found.get(mid)) is not None
        and not m["deleted"]
        and m["remaining_classes"] is not None
    }
    if not refunded:
        return {}
    version = batch.take()
    for mid in sorted(refunded):
        balance = int(found[mid]["remaining_classes"]) + returning[mid]
        _store_balance(tx, org, found[mid], balance, version, stamp)
        flagged = db.overdrawn_checkins(tx, org, mid)
        db.clear_overdrafts(tx, flagged[: max(0, len(flagged) - max(0, -balance))])
    effects = {event_id: version for event_id, mid in by_event.items() if mid in refunded}
    db.set_event_effects(tx, [(v, event_id) for event_id, v in sorted(effects.items())])
    return effects


def _store_balance(
    tx: db.Tx, org: str, stored: dict[str, Any], balance: int, version: int, stamp: str
) -> None:
    """A membership's new balance at ``version``, with the row hash of the row as stored."""
    mid = stored["id"]
    row = make_row(
        "membership", mid, row_data("membership", dict(stored, remaining_classes=balance))
    )
    db.set_membership_balance(
        tx, org, mid, balance, version=version, row_hash=row.row_hash(), now=stamp
    )


def _ids(items: Iterable[UploadItem]) -> set[str]:
    return {i.membership_id or "" for i in items}


def _payable(spending: Sequence[UploadItem], found: dict[str, dict[str, Any]]) -> list[UploadItem]:
    """The items whose membership is a live class pack or PT of the item's member."""
    return [
        i
        for i in spending
        if (m := found.get(i.membership_id or "")) is not None
        and not m["deleted"]
        and m["type"] in ("CLASS_PACK", "PT")
        and m["remaining_classes"] is not None
        and m["member_id"] == i.member_id
    ]


# -- heartbeats ------------------------------------------------------------------------------------


def first_missing_seq(
    tx: db.Tx, device_id: str, parts: Sequence[tuple[int, int]], also: Sequence[str] = ()
) -> int | None:
    """The first seq in these closed ranges (lowest first) the cloud holds no check-in, passage
    event or rejection for under the device, its recorded earlier enrolments or the devices
    ``also``, or None. One count per range when nothing is missing; a binary search of counts
    (about log2 of its length) in the range where something is."""
    for low, high in parts:
        if db.kiosk_seqs_held(tx, device_id, low, high, also) >= high - low + 1:
            continue
        a, b = low, high
        while a < b:
            mid = (a + b) // 2
            if db.kiosk_seqs_held(tx, device_id, low, mid, also) < mid - low + 1:
                b = mid
            else:
                a = mid + 1
        return a
    return None


@dataclass(frozen=True, slots=True)
class JournalCheck:
    """What a heartbeat's journal check found: the first seq to re-send (None: nothing), the
    devices of the gym to link as earlier enrolments (the same machine), and the device's
    journal span afterwards."""

    missing: int | None
    link: tuple[str, ...]
    span: JournalSpan


def check_journal(tx: db.Tx, device: DeviceAuth, hb: Heartbeat) -> JournalCheck:
    """The first seq in [retained_from_seq, synced_through_seq] the cloud holds nothing for
    under the device or its earlier enrolments, counting only outside ``device.journal_span``.
    When one is missing, other devices of the gym that ran in this very boot (the same machine)
    are counted as earlier enrolments too and returned to be linked. Reads only.

    The span is sound because what a device holds only grows: rows are inserted and never
    deleted or moved by the service, predecessor links are only added. Anything that removes a
    held row anyway is caught by triggers that cut the span below it (migration 6). So the
    answer is the one a count of the whole range would give. A door restored from a backup
    (its range moved back, even below the span) needs nothing: the rows it lost are still held;
    a retained range below the span is counted; one above it is fine. The span only grows up to
    the first missing seq, never past it."""
    retained, synced = hb.retained_from_seq, hb.synced_through_seq
    parts = device.journal_span.unverified(retained, synced)
    missing = first_missing_seq(tx, device.id, parts)
    link: list[str] = []
    if missing is not None:
        same_machine = db.devices_sharing_boot(
            tx, device.organization_id, device.gym_id, device.id, hb.boot_id
        )
        held_by = {device.id, *db.predecessors(tx, device.id)}
        link = sorted(set(same_machine) - held_by)
        if link:
            # Below ``missing`` all is held already; more holders only fill gaps above it.
            above = [(max(low, missing), high) for low, high in parts if high >= missing]
            missing = first_missing_seq(tx, device.id, above, link)
    span = device.journal_span.after(retained, synced, missing)
    return JournalCheck(missing, tuple(link), span)


@dataclass(frozen=True, slots=True)
class _CountFirst:
    """A heartbeat's journal check too long for the write transaction (COUNT_IN_WRITE_MAX_SEQS):
    the device as that transaction read it."""

    device: DeviceAuth


@dataclass(frozen=True, slots=True)
class _Counted:
    """A journal check made in a read transaction, for the device's span and losses then."""

    span: JournalSpan
    losses: int
    check: JournalCheck


def replica_status(tx: db.Tx, device: DeviceAuth, hb: Heartbeat) -> str:
    """``match`` / ``mismatch`` when the device is at the cloud's version (its checksum and count
    compared with the cloud's, read in ``tx``), else ``behind`` / ``ahead``. The version is the
    one ``device`` was authenticated with, which must be in ``tx`` (its first statement), so
    the checksum is read in the same snapshot."""
    version = device.org_version
    if hb.replica_version < version:
        return "behind"
    if hb.replica_version > version:
        return "ahead"
    scope = replica.Scope(device.organization_id, device.gym_id)
    point = replica.checkpoint(tx, scope, version)  # cached per version
    same = (point.checksum, point.count) == (hb.replica_checksum, hb.replica_count)
    return "match" if same else "mismatch"


def receive_heartbeat(
    database: db.Database, token: str | None, hb: Heartbeat, now: datetime
) -> HeartbeatReply:
    """Authenticate the device holding ``token`` (Unauthorized as ``authenticate_device``),
    record its health, anchors and occupancy (the latest report replaces the one before; a
    heartbeat without one leaves it) and answer resnapshot / resend_from_seq (``check_journal``,
    with its same-machine links recorded).

    One write transaction, at REPEATABLE READ on PostgreSQL (the version, checksum and journal
    counts read in one snapshot; a serialisation failure runs it again), in which the device's
    row is written once (its health, ``last_seen_at``, occupancy and journal span, and the
    admin's re-snapshot request read back); anchors are written only when new, and rows
    re-placed only for a boot with a new anchor. A journal check longer than
    COUNT_IN_WRITE_MAX_SEQS is counted in a read transaction first, and used when the device's
    span and losses are still those it was counted for (else it is counted again, inside).
    ``server_time`` is ``now``; the HTTP layer stamps it again when it answers."""

    def beat(tx: db.Tx, counted: _Counted | None) -> HeartbeatReply | _CountFirst:
        device = authenticate(tx, token, now, touch=False)  # the heartbeat writes last_seen_at
        span = device.journal_span
        if counted is not None and (counted.span, counted.losses) == (span, device.journal_losses):
            check = counted.check
        elif counted is None and _count_size(span, hb) > COUNT_IN_WRITE_MAX_SEQS:
            return _CountFirst(device)
        else:
            check = check_journal(tx, device, hb)
        status = replica_status(tx, device, hb)
        fresh = record_anchors(
            tx, device.id, [*hb.anchors, Anchor(hb.boot_id, hb.monotonic_ns, now)]
        )
        replace_unanchored(tx, device.id, fresh)
        db.link_predecessors(tx, device.id, check.link, utc_text(now))
        occupancy = None
        if hb.occupancy is not None:
            o = hb.occupancy
            occupancy = (o.now, o.entries_today, o.exits_today, o.max_today, o.capacity)
        requested = db.record_heartbeat(
            tx,
            device.id,
            _health(hb, now, status),
            occupancy=occupancy,
            verified=None if check.span == span else (check.span.low, check.span.high),
        )
        return HeartbeatReply(
            server_time=now,
            resnapshot=bool(requested) or status == "mismatch",
            resend_from_seq=check.missing,
        )

    outcome = database.transact(lambda tx: beat(tx, None), snapshot=True)
    if isinstance(outcome, _CountFirst):
        device = outcome.device
        check = database.transact(lambda tx: check_journal(tx, device, hb), write=False)
        counted = _Counted(device.journal_span, device.journal_losses, check)
        outcome = database.transact(lambda tx: beat(tx, counted), snapshot=True)
    assert isinstance(outcome, HeartbeatReply)
    return outcome


def _count_size(span: JournalSpan, hb: Heartbeat) -> int:
    """How many seqs a journal check of this heartbeat counts (at most)."""
    parts = span.unverified(hb.retained_from_seq, hb.synced_through_seq)
    return sum(high - low + 1 for low, high in parts)


def _health(hb: Heartbeat, now: datetime, status: str) -> dict[str, Any]:
    """The heartbeat's fields as db.HEARTBEAT_COLUMNS."""
    return {
        "hb_at": utc_text(now),
        "hb_boot_id": hb.boot_id,
        "hb_device_time": utc_text(hb.device_time),
        "hb_clock_quality": hb.clock_quality,
        "hb_backlog": hb.backlog,
        "hb_oldest_pending_age_s": hb.oldest_pending_age_s,
        "hb_replica_version": hb.replica_version,
        "hb_replica_checksum": hb.replica_checksum,
        "hb_replica_count": hb.replica_count,
        "hb_replica_status": status,
        "hb_last_seq": hb.last_seq,
        "hb_synced_through_seq": hb.synced_through_seq,
        "hb_retained_from_seq": hb.retained_from_seq,
        "hb_last_error": hb.last_error,
        "software_version": hb.software_version,
    }
