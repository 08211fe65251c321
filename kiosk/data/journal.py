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
from datetime import datetime

from kiosk.core import ids
from kiosk.core.model import Checkin, ClockQuality, Decision, Now, Reason, SyncState, Verdict
from kiosk.core.passes import PRUNE_MARGIN, PassAccepted
from kiosk.data.database import Database, utc_text
from kiosk.data.door_path import CHECKIN_COLUMNS, DOOR_PATH_QUERIES
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
    ) -> Checkin:
        """Record ``decision`` durably and return the row, only after its COMMIT returned: the
        caller may act on the door once this returns (commit, then act).

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
        not advance. Raises ValueError for a naive ``now.wall``, or a ``pass_use`` of another
        pass than ``pass_id``.
        """
        wall_time = utc_text(now.wall, "now.wall")
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
        """Mark pending check-ins as acknowledged by the cloud at ``at``; returns how many changed.
        Ids that are unknown or no longer pending are skipped, so a repeated acknowledgement is
        harmless.

        ``cloud_versions`` maps an id to the cloud version that carries its side effect (a class
        used): the door keeps counting that class until the replica reaches the version.
        ``UNKNOWN_CLOUD_VERSION`` means "some version up to the cloud's current one": counted until
        ``settle_unknown_versions`` is called after the next successful pull. Raises StoreError
        when the write fails (then nothing changed)."""
        versions = cloud_versions or {}
        at_text = utc_text(at, "at")
        with self._write("mark check-ins synced", "their sync state is unchanged") as conn:
            cursor = conn.executemany(
                "UPDATE checkins SET sync_state = 'synced', synced_at = ?, cloud_version = ?"
                " WHERE id = ? AND sync_state = 'pending'",
                ((at_text, versions.get(checkin_id), checkin_id) for checkin_id in checkin_ids),
            )
            return max(0, cursor.rowcount)

    def mark_rejected(self, checkin_ids: Iterable[str], *, at: datetime) -> int:
        """Mark pending check-ins as refused by the cloud at ``at`` (kept, never re-sent, never
        pruned); returns how many changed."""
        return self._settle(checkin_ids, SyncState.REJECTED, at)

    def _settle(self, checkin_ids: Iterable[str], state: SyncState, at: datetime) -> int:
        at_text = utc_text(at, "at")
        with self._write(f"mark check-ins {state.value}", "their sync state is unchanged") as conn:
            cursor = conn.executemany(
                "UPDATE checkins SET sync_state = ?, synced_at = ?"
                " WHERE id = ? AND sync_state = 'pending'",
                ((state.value, at_text, checkin_id) for checkin_id in checkin_ids),
            )
            return max(0, cursor.rowcount)

    def clock_floor(self) -> datetime | None:
        """The latest wall time the device knows to have happened: the newest wall time in the
        journal or the replica's sync time, whichever is later; None when there is neither."""
        with self._read("read the clock floor") as conn:
            (newest,) = conn.execute("SELECT MAX(wall_time) FROM checkins").fetchone()
            meta = conn.execute(
                "SELECT value FROM replica.replica_meta WHERE key = 'synced_at'"
            ).fetchone()
        synced_at = None if meta is None else str(meta[0])
        candidates = [utc_from_text(text) for text in (newest, synced_at) if text is not None]
        return max(candidates, default=None)

    def prune_synced(self, older_than: datetime) -> int:
        """Delete synced check-ins whose wall time AND sync time are both before ``older_than``;
        returns how many were deleted. Pending and rejected rows are never deleted. Requiring the
        sync time too keeps a row recorded with a wrong (early) clock for the full retention
        period after it reached the cloud."""
        cutoff = utc_text(older_than, "older_than")
        with self._write("prune synced check-ins", "nothing was deleted") as conn:
            cursor = conn.execute(
                "DELETE FROM checkins WHERE sync_state = 'synced'"
                " AND wall_time < ? AND synced_at < ?",
                (cutoff, cutoff),
            )
            return max(0, cursor.rowcount)

    # -- the journal's position and the cloud's answers -------------------------------------------

    def last_seq(self) -> int:
        """The newest seq handed out (0: none yet). One indexed read: the sync agent polls it to
        wake up within a second of a new check-in."""
        with self._read("read the journal's last seq") as conn:
            (last,) = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
        return int(last)

    def journal_position(self) -> JournalPosition:
        """Where the journal stands (``JournalPosition``), read in one snapshot; every query is
        an index lookup."""
        with self._read("read the journal's position") as conn:
            (last,) = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
            first_pending = conn.execute(
                "SELECT seq, wall_time FROM checkins WHERE sync_state = 'pending'"
                " ORDER BY seq LIMIT 1"
            ).fetchone()
            (backlog,) = conn.execute(
                "SELECT COUNT(*) FROM checkins WHERE sync_state = 'pending'"
            ).fetchone()
            (oldest,) = conn.execute("SELECT MIN(seq) FROM checkins").fetchone()
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
        """Put every synced or rejected check-in with a seq of ``seq`` or more back in the upload
        queue (a cloud restored from a backup asked for them again); returns how many. Their sync
        time and cloud version are cleared, so pending class uses count again. Raises StoreError
        when the write fails (then nothing changed)."""
        with self._write("queue check-ins again", "nothing was queued again") as conn:
            cursor = conn.execute(
                "UPDATE checkins SET sync_state = 'pending', synced_at = NULL, cloud_version = NULL"
                " WHERE seq >= ? AND sync_state IN ('synced', 'rejected')",
                (int(seq),),
            )
            return max(0, cursor.rowcount)

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
