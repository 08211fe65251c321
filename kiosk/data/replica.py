"""The member replica: the cloud's members, memberships, plans, hours and closures, as the door
reads them and as the sync agent replaces them.

The replica is a copy of the cloud's data, always replaced whole in one transaction and always
rebuildable by pulling it again (unlike the journal, ``kiosk.data.journal``). This module holds:

- ``ReplicaSnapshot`` (a whole replica as model objects) and ``snapshot_rows`` (the same as
  protocol rows, with the deterministic ids the demo's cloud shares);
- the replica's SQL: each protocol kind's table and columns, the shadow tables (the live ones
  prefixed ``shadow_``, schema v3) a snapshot is built in, the staged changes a change feed is
  kept in until its checkpoint, and the checksum (``sync.protocol.checksum``) summed in SQL;
- ``Replica``, the part of ``kiosk.data.store.Store`` that reads and writes it: the door's reads
  (``find_member_id``, ``member_facts``, ``site_facts``; statements in ``kiosk.data.door_path``),
  the sync agent's writes (``begin_snapshot``, ``add_snapshot_rows``, ``stage_changes``,
  ``apply_checkpoint``...) and the replica's facts (version, sync time, code salt, checksum).

Failure modes: database failures raise ``StoreError`` (``kiosk.data.database``), and a write that
fails leaves the live replica exactly as it was (one transaction each). ``apply_checkpoint`` also
refuses, without raising, a result whose count or checksum differs from the cloud's checkpoint
(``ApplyResult.ok`` False, rolled back). ValueError for a naive ``datetime``, a tombstone where
only live rows belong, or an unknown kind. SQL text is built only from this module's constant
table and column lists (hence the ``noqa: S608`` marks); every value goes through a placeholder.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from kiosk.core.model import (
    AccessWindow,
    Closure,
    LastEntry,
    Member,
    MemberFacts,
    Membership,
    MembershipType,
    MemberStatus,
    Plan,
    ReplicaInfo,
    SiteFacts,
)
from kiosk.data.database import Database, utc_text
from kiosk.data.door_path import DOOR_PATH_QUERIES
from sync.protocol import KIND_ORDER, KINDS, Checkpoint, ReplicaRow, utc_from_text


@dataclass(frozen=True)
class ReplicaSnapshot:
    """A complete replica as delivered by the cloud (or the demo seeder).

    ``members`` pairs each member with the keyed hash of its QR code (``credentials.code_hash``);
    the usable code itself is never stored. ``version`` is the cloud's replica version,
    ``synced_at`` the server time of the pull (timezone-aware; None when unknown) and
    ``code_salt`` the key those hashes were made with.
    """

    members: Sequence[tuple[Member, str]]
    memberships: Sequence[Membership]
    plans: Sequence[Plan]
    opening_hours: Sequence[AccessWindow]
    closures: Sequence[Closure]
    version: int
    synced_at: datetime | None
    code_salt: bytes


# -- the replica's SQL ----------------------------------------------------------------------------

# Children before parents, so the foreign keys never see an orphan.
_CLEAR_REPLICA = (
    "DELETE FROM memberships",
    "DELETE FROM plan_windows",
    "DELETE FROM members",
    "DELETE FROM plans",
    "DELETE FROM opening_hours",
    "DELETE FROM closures",
    "DELETE FROM replica_meta",
)

# Each protocol kind's live table and its data columns (named like the row's data keys; a plan's
# windows live in plan_windows). Every table also has ``id`` and ``row_hash``.
_KIND_TABLE = {
    "plan": "plans",
    "member": "members",
    "membership": "memberships",
    "hours": "opening_hours",
    "closure": "closures",
}
_KIND_COLUMNS = {
    "plan": ("name",),
    "member": ("organization_id", "first_name", "last_name", "status", "is_staff", "code_hash"),
    "membership": ("member_id", "plan_id", "type", "start_date", "end_date", "remaining_classes"),
    "hours": ("weekday", "open_minute", "close_minute"),
    "closure": ("start_date", "end_date", "reason"),
}
# Shadow tables are the live ones with this prefix (kiosk.data.migrations, v3).
_SHADOW = "shadow_"
# Live and shadow tables that hold replica rows, children before parents (the order to delete in).
_REPLICA_DATA_TABLES = (
    "memberships",
    "plan_windows",
    "members",
    "plans",
    "opening_hours",
    "closures",
)
_MASK64 = (1 << 64) - 1
# A row hash split in two halves whose sums cannot overflow (see _replica_sums).
_SUMS = "SUM(row_hash & 4294967295), SUM(row_hash >> 32)"
_WINDOW_COLUMNS = "plan_id, weekday, start_minute, end_minute"


def _insert_sql(kind: str, prefix: str, *, upsert: bool) -> str:
    columns = ("id", *_KIND_COLUMNS[kind], "row_hash")
    marks = ", ".join("?" for _ in columns)
    table = f"{prefix}{_KIND_TABLE[kind]}"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
    if upsert:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        sql += f" ON CONFLICT (id) DO UPDATE SET {updates}"
    return sql


def _row_values(row: ReplicaRow, hashed: int) -> tuple:
    data = row.data
    if data is None:
        raise ValueError(f"{row.kind} {row.id}: a tombstone has no values to store")
    return (row.id, *(data[c] for c in _KIND_COLUMNS[row.kind]), hashed)


def _hashed(rows: Iterable[ReplicaRow], tally: list[int]) -> Iterator[tuple]:
    """Column values of ``rows`` with their row hashes, counting them in ``tally[0]`` (streams, so
    ``executemany`` never holds more than one row)."""
    for row in rows:
        tally[0] += 1
        yield _row_values(row, row.row_hash())


def snapshot_rows(snapshot: ReplicaSnapshot) -> Iterator[ReplicaRow]:
    """``snapshot``'s model objects as protocol replica rows, in snapshot (kind) order.

    Opening hours and closures have no ids in the model, so they get deterministic ones from their
    values (``hours-<weekday>-<open>-<close>``, ``closure-<start>-<end>``, with ``-2``, ``-3``... for
    repeats): the demo's cloud can be seeded with exactly the rows the device holds, and both
    compute the same checksum. Data is built in the protocol's normal form (plan windows sorted),
    so ``sync.protocol.make_row`` would return it unchanged for valid values. Not validated here.
    """
    for plan in snapshot.plans:
        windows = sorted([w.weekday, w.start_minute, w.end_minute] for w in plan.windows)
        yield ReplicaRow("plan", plan.id, {"name": plan.name, "windows": windows})
    for member, code_hash in snapshot.members:
        yield ReplicaRow(
            "member",
            member.id,
            {
                "organization_id": member.organization_id,
                "first_name": member.first_name,
                "last_name": member.last_name,
                "status": str(member.status),
                "is_staff": bool(member.is_staff),
                "code_hash": code_hash,
            },
        )
    for ms in snapshot.memberships:
        yield ReplicaRow(
            "membership",
            ms.id,
            {
                "member_id": ms.member_id,
                "plan_id": ms.plan_id,
                "type": str(ms.type),
                "start_date": ms.start_date.isoformat(),
                "end_date": None if ms.end_date is None else ms.end_date.isoformat(),
                "remaining_classes": ms.remaining_classes,
            },
        )
    seen: Counter[str] = Counter()

    def unique(base: str) -> str:
        seen[base] += 1
        return base if seen[base] == 1 else f"{base}-{seen[base]}"

    for w in snapshot.opening_hours:
        yield ReplicaRow(
            "hours",
            unique(f"hours-{w.weekday}-{w.start_minute}-{w.end_minute}"),
            {"weekday": w.weekday, "open_minute": w.start_minute, "close_minute": w.end_minute},
        )
    for c in snapshot.closures:
        start, end = c.start_date.isoformat(), c.end_date.isoformat()
        yield ReplicaRow(
            "closure",
            unique(f"closure-{start}-{end}"),
            {"start_date": start, "end_date": end, "reason": c.reason},
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``Store.apply_checkpoint`` did. ``ok`` is True when the local count and checksum
    matched ``checkpoint`` and the change was committed; False means it was rolled back and the
    replica is exactly as before. ``checksum`` is None when a row had no hash (a replica loaded
    before schema v3). ``applied`` counts the staged changes applied. ``lock_ms`` is how long the
    write transaction held the database's write lock (the door waits on it for its own commits),
    ``swap_ms`` how long of that the shadow-to-live copy took (None when not a snapshot)."""

    ok: bool
    count: int
    checksum: str | None
    checkpoint: Checkpoint
    applied: int
    lock_ms: float
    swap_ms: float | None = None


class _ChecksumMismatch(Exception):
    """Raised inside a write transaction to roll it back; never leaves the store."""

    def __init__(self, count: int, checksum: str | None, applied: int) -> None:
        super().__init__("checksum mismatch")
        self.count = count
        self.checksum = checksum
        self.applied = applied


def _replica_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The replica's facts (``version``, ``synced_at``, ``code_salt``) as stored, by key."""
    return {
        str(key): str(value) for key, value in conn.execute("SELECT key, value FROM replica_meta")
    }


def _date_or_none(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


# -- writing rows (inside a transaction of the caller's) -------------------------------------------


def _insert_rows(
    conn: sqlite3.Connection, prefix: str, rows: Iterable[ReplicaRow], *, upsert: bool
) -> int:
    """Write ``rows`` (no tombstones) into the live (``prefix`` "") or shadow tables, one
    ``executemany`` per run of one kind, hashing each row on the way. Returns the row count."""
    written = 0
    for kind, group in itertools.groupby(rows, key=lambda row: row.kind):
        if kind not in _KIND_TABLE:
            raise ValueError(f"unknown replica kind {kind!r}")
        if kind == "plan":
            # Few rows, and each carries its windows: one by one.
            for row in group:
                _write_plan(conn, prefix, row, upsert=upsert)
                written += 1
            continue
        tally = [0]
        conn.executemany(_insert_sql(kind, prefix, upsert=upsert), _hashed(group, tally))
        written += tally[0]
    return written


def _write_plan(conn: sqlite3.Connection, prefix: str, row: ReplicaRow, *, upsert: bool) -> None:
    assert row.data is not None
    conn.execute(_insert_sql("plan", prefix, upsert=upsert), _row_values(row, row.row_hash()))
    if upsert:
        conn.execute(f"DELETE FROM {prefix}plan_windows WHERE plan_id = ?", (row.id,))  # noqa: S608
    conn.executemany(
        f"INSERT INTO {prefix}plan_windows (plan_id, weekday, start_minute, end_minute)"  # noqa: S608
        " VALUES (?, ?, ?, ?)",
        ((row.id, w[0], w[1], w[2]) for w in row.data["windows"]),
    )


def _apply_staged(conn: sqlite3.Connection, prefix: str) -> int:
    """Apply every staged change to the live (``prefix`` "") or shadow tables: tombstones first
    (children before parents), then upserts (parents before children). Returns how many changes
    were applied; the caller's transaction (with foreign keys deferred) makes them all or none."""
    applied = 0
    if not prefix:
        # A code may move from one member to another between two versions; clearing the
        # changing members' codes first means the unique index only ever sees the end state.
        conn.execute(
            "UPDATE members SET code_hash = NULL"
            " WHERE id IN (SELECT id FROM staged_changes WHERE kind = 'member')"
        )
    # Tombstones first, children before parents.
    deletions = conn.execute(
        "SELECT kind, id FROM staged_changes WHERE deleted = 1 ORDER BY kind_rank DESC, ord"
    )
    for kind, row_id in deletions:
        if kind == "plan":
            conn.execute(f"DELETE FROM {prefix}plan_windows WHERE plan_id = ?", (row_id,))  # noqa: S608
        table = f"{prefix}{_KIND_TABLE[kind]}"
        conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))  # noqa: S608
        applied += 1
    # Then upserts, parents before children.
    for kind in KINDS:
        rows = (
            ReplicaRow(kind, row_id, json.loads(data))
            for row_id, data in conn.execute(
                "SELECT id, data FROM staged_changes WHERE deleted = 0 AND kind = ? ORDER BY ord",
                (kind,),
            )
        )
        applied += _insert_rows(conn, prefix, rows, upsert=True)
    return applied


def _replica_sums(conn: sqlite3.Connection, prefix: str) -> tuple[int, str | None]:
    """Row count and checksum (``sync.protocol.checksum``) of the live or shadow replica, from
    the row_hash columns; checksum None when a row has no hash (loaded before schema v3).

    Summed in SQL, about three times faster than streaming the hashes through Python, which
    matters because it runs while the door's commits wait: each hash is split into its low 32
    bits (unsigned) and its high 32 bits (signed, an arithmetic shift), whose sums cannot
    overflow SQLite's 64-bit integers below 2**31 rows; recombined modulo 2**64 they give
    exactly the sum of the hashes modulo 2**64 (tests compare with ``checksum``)."""
    count = low = high = 0
    missing = False
    for kind in KINDS:
        table = f"{prefix}{_KIND_TABLE[kind]}"
        rows, hashed, low_sum, high_sum = conn.execute(
            f"SELECT COUNT(*), COUNT(row_hash), {_SUMS} FROM {table}"  # noqa: S608
        ).fetchone()
        count += rows
        missing = missing or hashed != rows
        low += low_sum or 0
        high += high_sum or 0
    return count, None if missing else f"{((high << 32) + low) & _MASK64:016x}"


def _swap_shadow_in(conn: sqlite3.Connection) -> None:
    """Make the live replica equal to the shadow, writing only the rows that differ: a fresh
    snapshot usually matches the live replica almost everywhere, and every row written here
    makes the door's commits wait longer. A row is unchanged when its id and row hash match
    (the hash covers every value). Runs inside apply_checkpoint's transaction, with foreign
    keys deferred to its commit."""
    # 1. Rows the cloud no longer has, children first (a removed member takes its memberships
    #    with it, as the cloud's own delete did).
    for kind in reversed(KINDS):
        table = _KIND_TABLE[kind]
        conn.execute(
            f"DELETE FROM {table} WHERE NOT EXISTS"  # noqa: S608
            f" (SELECT 1 FROM {_SHADOW}{table} AS s WHERE s.id = {table}.id)"
        )
    # 2. Plan windows: a few rows per plan, simply replaced.
    conn.execute("DELETE FROM plan_windows")
    conn.execute(
        f"INSERT INTO plan_windows ({_WINDOW_COLUMNS}) SELECT {_WINDOW_COLUMNS}"  # noqa: S608
        f" FROM {_SHADOW}plan_windows ORDER BY plan_id, weekday, start_minute"
    )
    # 3. A code may have moved between members: clear the codes of the members about to
    #    change, so the unique index only ever sees the end state.
    conn.execute(
        f"UPDATE members SET code_hash = NULL WHERE code_hash IS NOT NULL AND NOT EXISTS"  # noqa: S608
        f" (SELECT 1 FROM {_SHADOW}members AS s"
        " WHERE s.id = members.id AND s.row_hash = members.row_hash)"
    )
    # 4. New and changed rows, parents first. An upsert updates in place: a delete would
    #    cascade to the children of a changed member or plan.
    for kind in KINDS:
        table = _KIND_TABLE[kind]
        columns = ("id", *_KIND_COLUMNS[kind], "row_hash")
        names = ", ".join(columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        conn.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {_SHADOW}{table} AS s"  # noqa: S608
            f" WHERE NOT EXISTS (SELECT 1 FROM {table} AS l"
            " WHERE l.id = s.id AND l.row_hash = s.row_hash)"
            f" ORDER BY s.id ON CONFLICT (id) DO UPDATE SET {updates}"
        )


# -- the replica's part of the store ---------------------------------------------------------------


class Replica(Database):
    """The replica's reads and writes, mixed into ``kiosk.data.store.Store`` (one connection, one
    lock: ``Database``). Every method raises ``StoreError`` on database failures."""

    # -- a whole replica at once (the demo, the bench, tests) ------------------------------------

    def replace_replica(self, snapshot: ReplicaSnapshot) -> None:
        """Replace every replica table and the replica's version, sync time and code salt with
        ``snapshot``, in one transaction (the demo, the bench and tests; the sync agent goes through
        the shadow tables instead). Rows are streamed (``executemany`` over generators), so memory
        does not grow with the member count. Each row gets its protocol id and row hash
        (``snapshot_rows``), so a seeded replica has a valid checksum.

        Raises StoreError (and keeps the previous replica intact) when the snapshot breaks the
        schema (duplicate ids or code hashes, a membership of an unknown member or plan, a value
        out of range) or the write fails; ValueError for a naive ``synced_at``.
        """
        meta = [("version", str(int(snapshot.version))), ("code_salt", snapshot.code_salt.hex())]
        if snapshot.synced_at is not None:
            meta.append(("synced_at", utc_text(snapshot.synced_at, "snapshot.synced_at")))
        with self._write(
            "replace the replica", "replica NOT replaced, the previous one is still in use"
        ) as conn:
            for statement in _CLEAR_REPLICA:
                conn.execute(statement)
            _insert_rows(conn, "", snapshot_rows(snapshot), upsert=False)
            conn.executemany("INSERT INTO replica_meta (key, value) VALUES (?, ?)", meta)

    # -- replica sync (the agent's side: shadow tables, staged changes, checkpoints) -------------

    def begin_snapshot(self) -> None:
        """Empty the shadow tables and the staged changes, ready for a fresh snapshot. The live
        replica is not touched. Raises StoreError when the write fails."""
        with self._write("start a replica snapshot", "the live replica is unchanged") as conn:
            for table in _REPLICA_DATA_TABLES:
                conn.execute(f"DELETE FROM {_SHADOW}{table}")  # noqa: S608
            conn.execute("DELETE FROM staged_changes")

    def add_snapshot_rows(self, rows: Iterable[ReplicaRow]) -> int:
        """Add one snapshot page's rows to the shadow tables, in one transaction (the door's
        commits wait at most one page). Returns how many rows were added. Memory is bounded by
        the page: call once per page.

        Raises ValueError for a tombstone or an unknown kind (a snapshot holds live rows only) and
        StoreError when the write fails or a row repeats an id already in the shadow (the cloud's
        cursor went wrong): then none of this page is added, and the live replica is unchanged.
        """
        with self._write("add a snapshot page", "the page was not added") as conn:
            # A tombstone has no data: _row_values raises ValueError and the page rolls back.
            return _insert_rows(conn, _SHADOW, rows, upsert=False)

    def stage_changes(self, rows: Iterable[ReplicaRow]) -> int:
        """Stage one change page (rows and tombstones) until its checkpoint arrives; a later
        change of the same row replaces the earlier one. Row hashes are computed here, from the
        parsed data. Returns how many rows were staged. Raises ValueError for an unknown kind and
        StoreError when the write fails (then nothing of this page is staged)."""
        staged = []
        for row in rows:
            if row.kind not in KIND_ORDER:
                raise ValueError(f"unknown replica kind {row.kind!r}")
            if row.deleted:
                staged.append((row.kind, row.id, KIND_ORDER[row.kind], 1, None, None))
            else:
                staged.append(
                    (
                        row.kind,
                        row.id,
                        KIND_ORDER[row.kind],
                        0,
                        json.dumps(row.data, separators=(",", ":")),
                        row.row_hash(),
                    )
                )
        with self._write("stage replica changes", "the changes were not staged") as conn:
            (top,) = conn.execute("SELECT COALESCE(MAX(ord), 0) FROM staged_changes").fetchone()
            conn.executemany(
                "INSERT INTO staged_changes (kind, id, ord, kind_rank, deleted, data, row_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, id) DO UPDATE SET ord = excluded.ord,"
                " deleted = excluded.deleted, data = excluded.data, row_hash = excluded.row_hash",
                (
                    (kind, row_id, top + n, rank, deleted, data, hashed)
                    for n, (kind, row_id, rank, deleted, data, hashed) in enumerate(staged, 1)
                ),
            )
        return len(staged)

    def discard_staged(self) -> None:
        """Forget staged changes (an interrupted pull). Raises StoreError when the write fails."""
        with self._write("discard staged replica changes", "nothing was changed") as conn:
            conn.execute("DELETE FROM staged_changes")

    def apply_checkpoint(
        self,
        checkpoint: Checkpoint,
        *,
        code_salt: bytes,
        synced_at: datetime,
        into_shadow: bool,
    ) -> ApplyResult:
        """Apply the staged changes and switch the replica to ``checkpoint``, all or nothing.

        One write transaction: apply every staged change (upserts; tombstones delete, and deleting
        a row that is not there is a no-op) to the live tables, or with ``into_shadow`` to the
        shadow tables; count the target's rows and sum their hashes (``sync.protocol.checksum``);
        if either differs from ``checkpoint``, roll back and return ``ok=False`` (the live replica
        and the staged changes are exactly as before). Otherwise, for a snapshot, copy the shadow
        into the live tables (DELETE + INSERT ... SELECT) in the same transaction; then record the
        replica's version, ``synced_at`` and ``code_salt`` and clear the staged changes. The door
        reads the old replica until the commit and the new one after it, never a mix.

        Raises StoreError when the write fails or the new replica breaks a rule of the schema (a
        membership of a member that is not there, two members with one code): rolled back, the old
        replica untouched. ValueError for a naive ``synced_at``.
        """
        meta = (
            ("version", str(int(checkpoint.version))),
            ("code_salt", code_salt.hex()),
            ("synced_at", utc_text(synced_at, "synced_at")),
        )
        target = _SHADOW if into_shadow else ""
        swap_ms: float | None = None
        try:
            with self._write(
                "apply replica changes", "replica NOT changed, the previous one is still in use"
            ) as conn:
                locked = time.perf_counter()
                # Within one checkpoint rows may pass through states the schema forbids (a child
                # applied before the parent it now points to); only the end state must hold.
                conn.execute("PRAGMA defer_foreign_keys = ON")
                applied = _apply_staged(conn, target)
                count, summed = _replica_sums(conn, target)
                if count != checkpoint.count or summed != checkpoint.checksum:
                    raise _ChecksumMismatch(count, summed, applied)
                if into_shadow:
                    started = time.perf_counter()
                    _swap_shadow_in(conn)
                    swap_ms = (time.perf_counter() - started) * 1e3
                conn.executemany(
                    "INSERT INTO replica_meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    meta,
                )
                conn.execute("DELETE FROM staged_changes")
            lock_ms = (time.perf_counter() - locked) * 1e3
        except _ChecksumMismatch as mismatch:
            return ApplyResult(
                ok=False,
                count=mismatch.count,
                checksum=mismatch.checksum,
                checkpoint=checkpoint,
                applied=mismatch.applied,
                lock_ms=(time.perf_counter() - locked) * 1e3,
            )
        if into_shadow:
            # The shadow is a second copy of the replica: give its space back, after the commit so
            # the door's write lock is not held for it.
            with self._write(
                "empty the shadow replica", "it is emptied by the next snapshot"
            ) as conn:
                for table in _REPLICA_DATA_TABLES:
                    conn.execute(f"DELETE FROM {_SHADOW}{table}")  # noqa: S608
        return ApplyResult(
            ok=True,
            count=count,
            checksum=summed,
            checkpoint=checkpoint,
            applied=applied,
            lock_ms=lock_ms,
            swap_ms=swap_ms,
        )

    def replica_checksum(self) -> tuple[int, str | None]:
        """``(count, checksum)`` of the live replica as the protocol defines them
        (docs/sync-protocol.md): checksum None means unknown (rows loaded before schema v3 carry
        no hash), and the agent then takes a fresh snapshot."""
        with self._read("compute the replica's checksum") as conn:
            return _replica_sums(conn, "")

    def mark_replica_current(self, *, synced_at: datetime) -> None:
        """Record that the cloud confirmed the replica is current (a 304 to the idle poll): its
        sync time moves, its version and rows stay. Raises StoreError when the write fails."""
        with self._write("record the replica's sync time", "the sync time is unchanged") as conn:
            conn.execute(
                "INSERT INTO replica_meta (key, value) VALUES ('synced_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (utc_text(synced_at, "synced_at"),),
            )

    def replica_info(self) -> ReplicaInfo:
        """The replica's version (0 = never loaded) and the server time of its last pull (None =
        never)."""
        with self._read("read the replica's version") as conn:
            meta = _replica_meta(conn)
        synced_at = meta.get("synced_at")
        return ReplicaInfo(
            version=int(meta.get("version", "0")),
            synced_at=None if synced_at is None else utc_from_text(synced_at),
        )

    def code_salt(self) -> bytes:
        """The key the replica's code hashes were made with; empty bytes when no replica yet."""
        with self._read("read the replica's code salt") as conn:
            meta = _replica_meta(conn)
        return bytes.fromhex(meta.get("code_salt", ""))

    def member_count(self) -> int:
        """How many members the replica holds."""
        with self._read("count the replica's members") as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM members").fetchone()
        return int(count)

    # -- door path -------------------------------------------------------------------------------

    def find_member_id(self, code_hash: str) -> str | None:
        """The id of the member whose QR code hashes to ``code_hash``, or None."""
        with self._read("look up a member") as conn:
            row = conn.execute(DOOR_PATH_QUERIES["find_member_id"], (code_hash,)).fetchone()
        return None if row is None else str(row[0])

    def member_facts(self, member_id: str, door_id: str) -> MemberFacts | None:
        """What the access policy needs about one member, read in one snapshot: the member, its
        memberships (in the cloud's order), the plans they reference with their windows, the
        classes used that the replica's balances do not include yet (by membership id;
        memberships without any are absent): check-ins still pending upload, and uploaded ones
        whose cloud version is newer than the replica's, and the newest granted check-in of
        this member at ``door_id``. None when the replica has no such member."""
        with self._read("read a member's facts") as conn:
            row = conn.execute(DOOR_PATH_QUERIES["member"], (member_id,)).fetchone()
            if row is None:
                return None
            member = Member(
                id=row[0],
                organization_id=row[1],
                first_name=row[2],
                last_name=row[3],
                status=MemberStatus(row[4]),
                is_staff=bool(row[5]),
            )
            memberships = tuple(
                Membership(
                    id=r[0],
                    member_id=r[1],
                    type=MembershipType(r[2]),
                    start_date=date.fromisoformat(r[3]),
                    end_date=_date_or_none(r[4]),
                    remaining_classes=r[5],
                    plan_id=r[6],
                )
                for r in conn.execute(DOOR_PATH_QUERIES["memberships"], (member_id,))
            )
            plans: dict[str, Plan] = {}
            for ms in memberships:
                if ms.plan_id is None or ms.plan_id in plans:
                    continue
                plan_row = conn.execute(DOOR_PATH_QUERIES["plan"], (ms.plan_id,)).fetchone()
                if plan_row is None:  # the foreign key makes this impossible; be safe anyway
                    continue
                windows = tuple(
                    AccessWindow(weekday=w[0], start_minute=w[1], end_minute=w[2])
                    for w in conn.execute(DOOR_PATH_QUERIES["plan_windows"], (ms.plan_id,))
                )
                plans[ms.plan_id] = Plan(id=ms.plan_id, name=plan_row[0], windows=windows)
            pending_uses = {
                str(membership_id): int(total)
                for membership_id, total in conn.execute(
                    DOOR_PATH_QUERIES["pending_uses"], (member_id,)
                )
                if total
            }
            entry = conn.execute(DOOR_PATH_QUERIES["last_entry"], (member_id, door_id)).fetchone()
        last_entry = (
            None
            if entry is None
            else LastEntry(
                wall_time=utc_from_text(entry[0]), boot_id=entry[1], monotonic_ns=int(entry[2])
            )
        )
        return MemberFacts(
            member=member,
            memberships=memberships,
            plans=plans,
            pending_uses=pending_uses,
            last_entry=last_entry,
        )

    def site_facts(self) -> SiteFacts:
        """The facility's opening hours (by weekday and time) and closures (by start date)."""
        with self._read("read the opening hours and closures") as conn:
            hours = tuple(
                AccessWindow(weekday=r[0], start_minute=r[1], end_minute=r[2])
                for r in conn.execute(
                    "SELECT weekday, open_minute, close_minute FROM opening_hours"
                    " ORDER BY weekday, open_minute"
                )
            )
            closures = tuple(
                Closure(
                    start_date=date.fromisoformat(r[0]),
                    end_date=date.fromisoformat(r[1]),
                    reason=r[2],
                )
                for r in conn.execute(
                    "SELECT start_date, end_date, reason FROM closures ORDER BY start_date"
                )
            )
        return SiteFacts(opening_hours=hours, closures=closures)
