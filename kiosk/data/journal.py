"""The journal: the check-ins recorded at the door, the one thing on the device that cannot be
rebuilt, and their way to the cloud.

Every row is committed with ``synchronous=FULL`` before the door acts (commit, then act), carries
a UUIDv7 id (the idempotency key for the cloud) and a gap-free per-device sequence number taken
from ``journal_counter`` (never reused, even after pruning), and is never deleted while it is still
pending upload or was rejected. Beside the check-ins it keeps the door's replay memory of phone
passes (``pass_uses``: the (pass, time step) of every pass code admitted, written in the
transaction of its check-in, pruned once the step has left every window). This module holds
``Journal``, the part of ``kiosk.data.store.Store`` that appends rows (with a pass code's use),
reads them (the upload queue, the owner page's recent decisions and counts, whether a pass code
was used), settles them (synced, rejected, queued again when a restored cloud asks) and prunes
old synced ones; ``JournalPosition`` and ``DecisionRow``, what it reports; and
``UNKNOWN_CLOUD_VERSION``, the marker for a class use the cloud acknowledged without a version.

Failure modes: database failures raise ``StoreError`` (``kiosk.data.database``); a write that
fails changed nothing (one transaction each; a failed ``append_checkin`` recorded nothing and did
not advance the sequence). ValueError for a naive ``datetime``. SQL text is built only from
constant column lists (``kiosk.data.door_path``; hence the ``noqa: S608`` marks); every value goes
through a placeholder.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from kiosk.core import ids
from kiosk.core.model import (
    Checkin,
    ClockQuality,
    Decision,
    DoorEvent,
    EventKind,
    Now,
    Reason,
    SyncState,
    Verdict,
)
from kiosk.core.occupancy import Movement
from kiosk.core.passes import PRUNE_MARGIN, PassAccepted
from kiosk.data.database import Database, utc_text
from kiosk.data.door_path import CHECKIN_COLUMNS, DOOR_PATH_QUERIES, EVENT_COLUMNS
from sync.protocol import utc_from_text

# An uploaded check-in whose side-effect version the cloud did not say (a ``duplicate`` answer):
# counted as used until the next successful pull, which certainly includes it.
UNKNOWN_CLOUD_VERSION = 2**63 - 1


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """Where the journal stands, for the heartbeat and the owner page (docs/sync-protocol.md).

    ``last_seq``: the newest seq ever handed out (0: none yet). ``synced_through_seq``: every row
    up to it is settled (synced or rejected). ``retained_from_seq``: the oldest seq still kept
    (older rows were pruned; ``last_seq + 1`` once every row was pruned; 0 when nothing was ever
    written). ``backlog``: rows pending upload. ``oldest_pending_at``: the wall time recorded on
    the oldest pending row (as the door's clock read it), None without a backlog."""

    last_seq: int
    synced_through_seq: int
    retained_from_seq: int
    backlog: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True, slots=True)
class PassageWait:
    """A grant waiting for its passage (the turnstile's entry input is wired): the check-in
    ``checkin_id`` (journal position ``seq``) at ``door_id``, to be confirmed by an entry passage
    before its deadline or annulled after it. The deadline is ``deadline_ns`` on the monotonic
    clock of boot ``boot_id``, and ``deadline_wall`` on the wall clock (after a reboot)."""

    checkin_id: str
    seq: int
    door_id: str
    boot_id: str
    deadline_ns: int
    deadline_wall: datetime


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One journal row as the owner page shows it (``Store.recent_decisions``): the member's id
    never leaves the store, only the name parts the page masks as the owner configured.

    ``at`` is the wall time the door recorded; ``reason`` the journal's text (a ``Reason`` value,
    kept as text so a newer release's reason still shows); ``has_member`` says whether the
    decision named a member; ``first_name``/``last_name`` are None when it did not, or when that
    member is no longer in the replica. ``by_pass`` says the code was a phone pass (its id stays
    in the store too)."""

    seq: int
    at: datetime
    door_id: str
    verdict: str
    reason: str
    has_member: bool
    first_name: str | None
    last_name: str | None
    sync_state: str
    by_pass: bool = False


def _checkin_from_row(row: sqlite3.Row | tuple) -> Checkin:
    """A ``checkins`` row read in ``CHECKIN_COLUMNS`` order as a ``Checkin``."""
    return Checkin(
        id=row[0],
        seq=int(row[1]),
        door_id=row[2],
        decision=Verdict(row[3]),
        reason=Reason(row[4]),
        member_id=row[5],
        membership_id=row[6],
        classes_used=int(row[7]),
        replica_version=int(row[8]),
        wall_time=utc_from_text(row[9]),
        boot_id=row[10],
        monotonic_ns=int(row[11]),
        clock_quality=ClockQuality(row[12]),
        sync_state=SyncState(row[13]),
        pass_id=row[14],
    )


def _event_from_row(row: sqlite3.Row | tuple) -> DoorEvent:
    """A ``door_events`` row read in ``EVENT_COLUMNS`` order as a ``DoorEvent``."""
    return DoorEvent(
        id=row[0],
        seq=int(row[1]),
        door_id=row[2],
        kind=EventKind(row[3]),
        checkin_id=row[4],
        wall_time=utc_from_text(row[5]),
        boot_id=row[6],
        monotonic_ns=int(row[7]),
        clock_quality=ClockQuality(row[8]),
        sync_state=SyncState(row[9]),
    )


# The journal's two tables of uploaded rows, settled and pruned alike.
_UPLOADED_TABLES = ("checkins", "door_events")

# -- the journal's part of the store ---------------------------------------------------------------


class Journal(Database):
    """The journal's reads and writes, mixed into ``kiosk.data.store.Store`` (one connection, one
    lock: ``Database``). Every method raises ``StoreError`` on database failures."""

    # -- recording and reading check-ins --------------------------------------------------------

    def append_checkin(
        self,
        decision: Decision,
        *,
        door_id: str,
        replica_version: int,
        now: Now,
        pass_id: str | None = None,
        pass_use: PassAccepted | None = None,
        await_passage_s: float | None = None,
        exit_event: bool = False,
    ) -> Checkin:
        """Record ``decision`` durably and return the row, only after its COMMIT returned: the
        caller may act on the door once this returns (commit, then act).

        For a grant, in the same transaction: ``await_passage_s`` (seconds; the turnstile's entry
        input is wired) records a ``PassageWait`` with the deadline that far from ``now`` on
        both clocks, to be resolved by ``append_event`` (entry or annulled); ``exit_event`` (an
        exit-side scanner) records an ``exit`` event naming the check-in, under the next seq.

        One transaction takes the next sequence number from the journal's counter and inserts the
        row under a fresh UUIDv7 id, so the sequence has no gaps and no reuse, even after pruning.
        ``pass_id`` is the phone pass the scanned code named (None: a card). ``pass_use`` is a
        pass code accepted for this decision (``kiosk.core.passes.check_pass``): its (pass, step)
        is remembered in the same transaction, so the code is refused as replayed from the moment
        this returns, even after a power cut, and pairs whose ``keep_until`` is more than
        ``PRUNE_MARGIN`` before ``now.wall`` are deleted (an index range; usually none or one).

        Raises StoreError when the row could not be recorded (disk full, read-only, locked for
        longer than the busy timeout, damaged file, or the same pass code already used: another
        door loop on this store took it first): then nothing was written and the sequence did
        not advance. Raises ValueError for a naive ``now.wall``, a ``pass_use`` of another
        pass than ``pass_id``, or ``await_passage_s`` or ``exit_event`` on a refusal or together.
        """
        wall_time = utc_text(now.wall, "now.wall")
        if await_passage_s is not None or exit_event:
            if Verdict(decision.verdict) is not Verdict.GRANTED:
                raise ValueError("only a grant waits for a passage or counts as an exit")
            if await_passage_s is not None and exit_event:
                raise ValueError("a grant either waits for its passage or is an exit, not both")
        deadline_wall = deadline_ns = None
        if await_passage_s is not None:
            deadline_ns = now.monotonic_ns + int(await_passage_s * 1e9)
            deadline_wall = utc_text(now.wall + timedelta(seconds=await_passage_s), "now.wall")
        if pass_use is not None:
            if pass_id is not None and pass_id != pass_use.pass_id:
                raise ValueError("pass_use belongs to another pass than pass_id")
            pass_id = pass_use.pass_id
            keep_until = utc_text(pass_use.keep_until, "pass_use.keep_until")
            prune_before = utc_text(now.wall - PRUNE_MARGIN, "now.wall")
        checkin_id = str(ids.uuid7())
        verdict = Verdict(decision.verdict)
        reason = Reason(decision.reason)
        quality = ClockQuality(now.quality)
        with self._write("record a check-in", "check-in NOT recorded") as conn:
            (seq,) = conn.execute(DOOR_PATH_QUERIES["next_seq"]).fetchone()
            conn.execute(
                DOOR_PATH_QUERIES["insert_checkin"],
                (
                    checkin_id,
                    seq,
                    door_id,
                    verdict.value,
                    reason.value,
                    decision.member_id,
                    decision.membership_id,
                    decision.classes_used,
                    replica_version,
                    wall_time,
                    now.boot_id,
                    now.monotonic_ns,
                    quality.value,
                    SyncState.PENDING.value,
                    pass_id,
                ),
            )
            if pass_use is not None:
                conn.execute(DOOR_PATH_QUERIES["prune_pass_uses"], (prune_before,))
                conn.execute(
                    DOOR_PATH_QUERIES["insert_pass_use"],
                    (pass_use.pass_id, int(pass_use.step), keep_until),
                )
            if deadline_ns is not None:
                conn.execute(
                    DOOR_PATH_QUERIES["insert_passage_wait"],
                    (checkin_id, seq, door_id, now.boot_id, deadline_ns, deadline_wall),
                )
            if exit_event:
                (event_seq,) = conn.execute(DOOR_PATH_QUERIES["next_seq"]).fetchone()
                conn.execute(
                    DOOR_PATH_QUERIES["insert_event"],
                    (
                        str(ids.uuid7()),
                        event_seq,
                        door_id,
                        EventKind.EXIT.value,
                        checkin_id,
                        wall_time,
                        now.boot_id,
                        now.monotonic_ns,
                        quality.value,
                        SyncState.PENDING.value,
                    ),
                )
        return Checkin(
            id=checkin_id,
            seq=int(seq),
            door_id=door_id,
            decision=verdict,
            reason=reason,
            member_id=decision.member_id,
            membership_id=decision.membership_id,
            classes_used=decision.classes_used,
            replica_version=replica_version,
            wall_time=utc_from_text(wall_time),
            boot_id=now.boot_id,
            monotonic_ns=now.monotonic_ns,
            clock_quality=quality,
            sync_state=SyncState.PENDING,
            pass_id=pass_id,
        )

    def pass_used(self, pass_id: str, step: int) -> bool:
        """True when this door already accepted the code of pass ``pass_id`` at time step
        ``step`` (and the pair was not pruned yet: it is kept until the step left every window
        the code is accepted in, plus ``PRUNE_MARGIN``). One primary-key lookup."""
        with self._read("look up a used pass code") as conn:
            row = conn.execute(DOOR_PATH_QUERIES["pass_used"], (pass_id, int(step))).fetchone()
        return row is not None

    def pass_use_count(self) -> int:
        """How many accepted pass codes the door remembers (tests, diagnostics)."""
        with self._read("count used pass codes") as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM pass_uses").fetchone()
        return int(count)

    # -- door events ----------------------------------------------------------------------------

    def append_event(
        self,
        kind: EventKind,
        *,
        door_id: str,
        at: Now,
        checkin_id: str | None = None,
    ) -> DoorEvent | None:
        """Record a door event durably under the journal's next seq and return it, after its
        COMMIT returned. ``at`` is when it happened (the passage, the deadline that ran out).

        ``entry`` and ``annulled`` resolve the ``PassageWait`` of ``checkin_id``: in one
        transaction the wait is deleted and the event written, and only if the wait was still
        there; otherwise (already resolved, by this door before a restart or by another loop on
        this store) nothing is written and None is returned, so a grant ends confirmed or
        annulled exactly once. ``tailgating`` names no check-in; ``exit`` may name one (an
        exit-side scanner's grant; ``append_checkin(exit_event=True)`` writes that one).

        Raises StoreError when the event could not be recorded (then nothing changed and the
        sequence did not advance); ValueError for a naive ``at.wall``, an ``entry`` or
        ``annulled`` without ``checkin_id`` or a ``tailgating`` with one.
        """
        kind = EventKind(kind)
        resolves = kind in (EventKind.ENTRY, EventKind.ANNULLED)
        if resolves and checkin_id is None:
            raise ValueError(f"a {kind.value} event names the grant it resolves")
        if kind is EventKind.TAILGATING and checkin_id is not None:
            raise ValueError("a tailgating event names no check-in")
        wall_time = utc_text(at.wall, "at.wall")
        quality = ClockQuality(at.quality)
        event_id = str(ids.uuid7())
        with self._write(f"record a door event ({kind.value})", "door event NOT recorded") as conn:
            if resolves:
                deleted = conn.execute(DOOR_PATH_QUERIES["delete_passage_wait"], (checkin_id,))
                if deleted.rowcount == 0:
                    return None
            (seq,) = conn.execute(DOOR_PATH_QUERIES["next_seq"]).fetchone()
            conn.execute(
                DOOR_PATH_QUERIES["insert_event"],
                (
                    event_id,
                    seq,
                    door_id,
                    kind.value,
                    checkin_id,
                    wall_time,
                    at.boot_id,
                    at.monotonic_ns,
                    quality.value,
                    SyncState.PENDING.value,
                ),
            )
        return DoorEvent(
            id=event_id,
            seq=int(seq),
            door_id=door_id,
            kind=kind,
            checkin_id=checkin_id,
            wall_time=utc_from_text(wall_time),
            boot_id=at.boot_id,
            monotonic_ns=at.monotonic_ns,
            clock_quality=quality,
            sync_state=SyncState.PENDING,
        )

    def passage_waits(self, door_id: str | None = None) -> list[PassageWait]:
        """The grants still waiting for their passage (at ``door_id``, or every door), oldest
        (lowest seq) first: what a door loop starting up must resolve, confirmed by the next
        entry passages or annulled at their deadlines. Usually none or a few rows."""
        sql = (
            "SELECT checkin_id, seq, door_id, boot_id, deadline_ns, deadline_wall"
            " FROM passage_waits"
        )
        params: tuple = ()
        if door_id is not None:
            sql += " WHERE door_id = ?"
            params = (door_id,)
        with self._read("read the grants waiting for their passage") as conn:
            rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [
            PassageWait(
                checkin_id=str(r[0]),
                seq=int(r[1]),
                door_id=str(r[2]),
                boot_id=str(r[3]),
                deadline_ns=int(r[4]),
                deadline_wall=utc_from_text(r[5]),
            )
            for r in rows
        ]

    def door_events(self, limit: int = 50) -> list[DoorEvent]:
        """The newest ``limit`` door events, newest (highest seq) first."""
        with self._read("read recent door events") as conn:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM door_events ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (max(0, int(limit)),),
            ).fetchall()
        return [_event_from_row(row) for row in rows]

    def door_movements(self, since: datetime, door_id: str) -> list[Movement]:
        """What happened at ``door_id`` from ``since`` on (the door's wall time), as the
        occupancy counts it (``kiosk.core.occupancy.count``), in one snapshot: each granted
        check-in that was not annulled and is not an exit-side scanner's (kind ``grant``), and
        the ``entry``, ``tailgating`` and ``exit`` events. Ranges of the two wall-time indexes
        plus a probe of the events by check-in per grant: a day is a few thousand rows at most.
        Raises ValueError for a naive ``since``."""
        low = utc_text(since, "since")
        with self._read("read the door's movements") as conn:
            rows = conn.execute(
                "SELECT c.wall_time, 'grant' FROM checkins AS c"
                " WHERE c.wall_time >= ? AND c.door_id = ? AND c.decision = 'granted'"
                " AND NOT EXISTS (SELECT 1 FROM door_events AS e"
                "  WHERE e.checkin_id = c.id AND e.kind IN ('annulled', 'exit'))"
                " UNION ALL"
                " SELECT wall_time, kind FROM door_events"
                " WHERE wall_time >= ? AND door_id = ? AND kind IN ('entry', 'tailgating', 'exit')",
                (low, door_id, low, door_id),
            ).fetchall()
        return [Movement(utc_from_text(at), str(kind)) for at, kind in rows]

    def event_counts_by_state(self) -> dict[str, int]:
        """Door events per sync state, every state present (like ``counts_by_state``)."""
        counts = {state.value: 0 for state in SyncState}
        with self._read("count door events by sync state") as conn:
            for state, count in conn.execute(
                "SELECT sync_state, COUNT(*) FROM door_events GROUP BY sync_state"
            ):
                counts[str(state)] = int(count)
        return counts

    def recent_checkins(self, limit: int = 50) -> list[Checkin]:
        """The newest ``limit`` check-ins, newest (highest seq) first."""
        with self._read("read recent check-ins") as conn:
            rows = conn.execute(
                f"SELECT {CHECKIN_COLUMNS} FROM checkins ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (max(0, int(limit)),),
            ).fetchall()
        return [_checkin_from_row(row) for row in rows]

    def recent_decisions(self, limit: int = 20) -> list[DecisionRow]:
        """The newest ``limit`` decisions, newest (highest seq) first, each with its member's name
        from the replica (attached as ``replica``; ``DecisionRow``). A walk down the seq index plus
        one primary-key lookup per row: the cost does not grow with the journal or the replica."""
        with self._read("read recent decisions") as conn:
            rows = conn.execute(
                "SELECT c.seq, c.wall_time, c.door_id, c.decision, c.reason,"
                " c.member_id IS NOT NULL, m.first_name, m.last_name, c.sync_state,"
                " c.pass_id IS NOT NULL"
                " FROM checkins AS c LEFT JOIN replica.members AS m ON m.id = c.member_id"
                " ORDER BY c.seq DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
        return [
            DecisionRow(
                seq=int(r[0]),
                at=utc_from_text(r[1]),
                door_id=str(r[2]),
                verdict=str(r[3]),
                reason=str(r[4]),
                has_member=bool(r[5]),
                first_name=r[6],
                last_name=r[7],
                sync_state=str(r[8]),
                by_pass=bool(r[9]),
            )
            for r in rows
        ]

    def decision_counts(self, since: datetime) -> dict[tuple[str, str], int]:
        """How many decisions were recorded at or after ``since`` (the door's wall time), by
        ``(verdict, reason)``. A range of the wall-time index: cheap for a day, slower for a
        year. Raises ValueError for a naive ``since``."""
        since_text = utc_text(since, "since")
        with self._read("count recent decisions") as conn:
            rows = conn.execute(
                "SELECT decision, reason, COUNT(*) FROM checkins WHERE wall_time >= ?"
                " GROUP BY decision, reason",
                (since_text,),
            ).fetchall()
        return {(str(verdict), str(reason)): int(count) for verdict, reason, count in rows}

    def pending_checkins(self, limit: int = 100, *, after_seq: int = 0) -> list[Checkin]:
        """The upload queue: the oldest ``limit`` check-ins still pending with a seq above
        ``after_seq``, lowest seq first."""
        with self._read("read the upload queue") as conn:
            rows = conn.execute(
                f"SELECT {CHECKIN_COLUMNS} FROM checkins"  # noqa: S608
                " WHERE sync_state = 'pending' AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (int(after_seq), max(0, int(limit))),
            ).fetchall()
        return [_checkin_from_row(row) for row in rows]

    def pending_uploads(self, limit: int = 100, *, after_seq: int = 0) -> list[Checkin | DoorEvent]:
        """The upload queue of protocol 3: the oldest ``limit`` journal rows still pending with
        a seq above ``after_seq``, check-ins and door events together, lowest seq first (one
        sequence for the whole journal: the cloud sees them in the order they happened). Settle
        them with ``mark_synced`` and ``mark_rejected``, which take the ids of both."""
        count = max(0, int(limit))
        with self._read("read the upload queue") as conn:
            checkins = conn.execute(
                f"SELECT {CHECKIN_COLUMNS} FROM checkins"  # noqa: S608
                " WHERE sync_state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
                (int(after_seq), count),
            ).fetchall()
            events = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM door_events"  # noqa: S608
                " WHERE sync_state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
                (int(after_seq), count),
            ).fetchall()
        rows: list[Checkin | DoorEvent] = [_checkin_from_row(r) for r in checkins]
        rows += [_event_from_row(r) for r in events]
        rows.sort(key=lambda row: row.seq)
        return rows[:count]

    def checkin_count(self) -> int:
        """How many check-ins the journal holds (pruned ones are gone)."""
        with self._read("count check-ins") as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM checkins").fetchone()
        return int(count)

    def counts_by_state(self) -> dict[str, int]:
        """Check-ins per sync state, every state present: ``{"pending": n, "synced": n,
        "rejected": n}``."""
        counts = {state.value: 0 for state in SyncState}
        with self._read("count check-ins by sync state") as conn:
            for state, count in conn.execute(
                "SELECT sync_state, COUNT(*) FROM checkins GROUP BY sync_state"
            ):
                counts[str(state)] = int(count)
        return counts

    def mark_synced(
        self,
        checkin_ids: Iterable[str],
        *,
        at: datetime,
        cloud_versions: Mapping[str, int | None] | None = None,
    ) -> int:
        """Mark pending check-ins and door events as acknowledged by the cloud at ``at``; returns
        how many changed. Ids that are unknown or no longer pending are skipped, so a repeated
        acknowledgement is harmless.

        ``cloud_versions`` maps an id to the cloud version that carries its side effect (a class
        used): the door keeps counting that class until the replica reaches the version.
        ``UNKNOWN_CLOUD_VERSION`` means "some version up to the cloud's current one": counted until
        ``settle_unknown_versions`` is called after the next successful pull. Raises StoreError
        when the write fails (then nothing changed)."""
        versions = cloud_versions or {}
        at_text = utc_text(at, "at")
        wanted = list(checkin_ids)
        with self._write("mark check-ins synced", "their sync state is unchanged") as conn:
            cursor = conn.executemany(
                "UPDATE checkins SET sync_state = 'synced', synced_at = ?, cloud_version = ?"
                " WHERE id = ? AND sync_state = 'pending'",
                ((at_text, versions.get(checkin_id), checkin_id) for checkin_id in wanted),
            )
            changed = max(0, cursor.rowcount)
            # A door event's side effect (a class given back) lives in the cloud's replica
            # version, which the next pull brings; there is nothing to count meanwhile.
            cursor = conn.executemany(
                "UPDATE door_events SET sync_state = 'synced', synced_at = ?"
                " WHERE id = ? AND sync_state = 'pending'",
                ((at_text, event_id) for event_id in wanted),
            )
            return changed + max(0, cursor.rowcount)

    def mark_rejected(self, checkin_ids: Iterable[str], *, at: datetime) -> int:
        """Mark pending check-ins and door events as refused by the cloud at ``at`` (kept, never
        re-sent, never pruned); returns how many changed."""
        return self._settle(checkin_ids, SyncState.REJECTED, at)

    def _settle(self, row_ids: Iterable[str], state: SyncState, at: datetime) -> int:
        at_text = utc_text(at, "at")
        wanted = list(row_ids)
        changed = 0
        with self._write(f"mark check-ins {state.value}", "their sync state is unchanged") as conn:
            for table in _UPLOADED_TABLES:
                cursor = conn.executemany(
                    f"UPDATE {table} SET sync_state = ?, synced_at = ?"  # noqa: S608
                    " WHERE id = ? AND sync_state = 'pending'",
                    ((state.value, at_text, row_id) for row_id in wanted),
                )
                changed += max(0, cursor.rowcount)
        return changed

    def clock_floor(self) -> datetime | None:
        """The latest wall time the device knows to have happened: the newest wall time in the
        journal (check-ins and door events) or the replica's sync time, whichever is later; None
        when there is none."""
        with self._read("read the clock floor") as conn:
            (newest,) = conn.execute("SELECT MAX(wall_time) FROM checkins").fetchone()
            (newest_event,) = conn.execute("SELECT MAX(wall_time) FROM door_events").fetchone()
            meta = conn.execute(
                "SELECT value FROM replica.replica_meta WHERE key = 'synced_at'"
            ).fetchone()
        synced_at = None if meta is None else str(meta[0])
        texts = (newest, newest_event, synced_at)
        candidates = [utc_from_text(text) for text in texts if text is not None]
        return max(candidates, default=None)

    def prune_synced(self, older_than: datetime) -> int:
        """Delete synced check-ins and door events whose wall time AND sync time are both
        before ``older_than``; returns how many were deleted. Pending and rejected rows are never
        deleted. Requiring the sync time too keeps a row recorded with a wrong (early) clock for
        the full retention period after it reached the cloud."""
        cutoff = utc_text(older_than, "older_than")
        deleted = 0
        with self._write("prune synced check-ins", "nothing was deleted") as conn:
            for table in _UPLOADED_TABLES:
                cursor = conn.execute(
                    f"DELETE FROM {table} WHERE sync_state = 'synced'"  # noqa: S608
                    " AND wall_time < ? AND synced_at < ?",
                    (cutoff, cutoff),
                )
                deleted += max(0, cursor.rowcount)
        return deleted

    # -- the journal's position and the cloud's answers -------------------------------------------

    def last_seq(self) -> int:
        """The newest seq handed out (0: none yet). One indexed read: the sync agent polls it to
        wake up within a second of a new check-in."""
        with self._read("read the journal's last seq") as conn:
            (last,) = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
        return int(last)

    def journal_position(self) -> JournalPosition:
        """Where the journal stands (``JournalPosition``), check-ins and door events together
        (one sequence), read in one snapshot; every query is an index lookup."""
        with self._read("read the journal's position") as conn:
            (last,) = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
            firsts = [
                conn.execute(
                    f"SELECT seq, wall_time FROM {table} WHERE sync_state = 'pending'"  # noqa: S608
                    " ORDER BY seq LIMIT 1"
                ).fetchone()
                for table in _UPLOADED_TABLES
            ]
            backlog = sum(
                conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE sync_state = 'pending'"  # noqa: S608
                ).fetchone()[0]
                for table in _UPLOADED_TABLES
            )
            oldests = [
                conn.execute(f"SELECT MIN(seq) FROM {table}").fetchone()[0]  # noqa: S608
                for table in _UPLOADED_TABLES
            ]
        first_pending = min((row for row in firsts if row is not None), default=None)
        oldest = min((seq for seq in oldests if seq is not None), default=None)
        last = int(last)
        # Every row pruned: nothing is retained, so the range starts after the last seq.
        retained = int(oldest) if oldest is not None else (last + 1 if last else 0)
        return JournalPosition(
            last_seq=last,
            synced_through_seq=last if first_pending is None else int(first_pending[0]) - 1,
            retained_from_seq=retained,
            backlog=int(backlog),
            oldest_pending_at=None if first_pending is None else utc_from_text(first_pending[1]),
        )

    def requeue_from(self, seq: int) -> int:
        """Put every synced or rejected check-in and door event with a seq of ``seq`` or more
        back in the upload queue (a cloud restored from a backup asked for them again); returns
        how many. Their sync time and (check-ins') cloud version are cleared, so pending class
        uses count again. Raises StoreError when the write fails (then nothing changed)."""
        with self._write("queue check-ins again", "nothing was queued again") as conn:
            cursor = conn.execute(
                "UPDATE checkins SET sync_state = 'pending', synced_at = NULL, cloud_version = NULL"
                " WHERE seq >= ? AND sync_state IN ('synced', 'rejected')",
                (int(seq),),
            )
            requeued = max(0, cursor.rowcount)
            cursor = conn.execute(
                "UPDATE door_events SET sync_state = 'pending', synced_at = NULL"
                " WHERE seq >= ? AND sync_state IN ('synced', 'rejected')",
                (int(seq),),
            )
            return requeued + max(0, cursor.rowcount)

    def settle_unknown_versions(self, version: int) -> int:
        """After a successful pull at replica ``version``: check-ins acknowledged with
        ``UNKNOWN_CLOUD_VERSION`` before the pull are included in it, so they stop counting.
        Returns how many rows changed. Raises StoreError when the write fails."""
        with self._write("settle acknowledged class uses", "nothing was changed") as conn:
            cursor = conn.execute(
                "UPDATE checkins SET cloud_version = ? WHERE classes_used > 0 AND cloud_version = ?",
                (int(version), UNKNOWN_CLOUD_VERSION),
            )
            return max(0, cursor.rowcount)
