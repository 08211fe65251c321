"""The member replica: the cloud's members, memberships, phone passes, plans, hours and
closures, as the door reads them and as the sync agent replaces them.

The replica is a copy of the cloud's data, always rebuildable by pulling it again (unlike the
journal, ``kiosk.data.journal``). It lives in a SQLite file of its own beside the journal
(``kiosk.db-replica-<id>``, named by the pointer ``kiosk.db-replica``; ``kiosk.data.database``
explains the files and why), attached read-only to every ``Store``'s connection as ``replica``.
This module holds:

- ``ReplicaSnapshot`` (a whole replica as model objects) and ``snapshot_rows`` (the same as
  protocol rows, with the deterministic ids the demo's cloud shares);
- the replica's SQL: each protocol kind's table and columns, the staged changes a change feed is
  kept in until its checkpoint, and the checksum (``sync.protocol.checksum``) summed in SQL;
- ``Replica``, the part of ``kiosk.data.store.Store`` that reads and writes it: the door's reads
  (``find_member_id``, ``pass_lookup``, ``member_facts``, ``site_facts``; statements in
  ``kiosk.data.door_path``),
  the sync agent's writes (``begin_snapshot``, ``add_snapshot_rows``, ``stage_changes``,
  ``apply_checkpoint``...) and the replica's facts (version, sync time, code salt, checksum).

How the sync agent writes it, and what the door waits for (nothing but one frame):

- **A snapshot** is built in a new replica file (``kiosk.data.database.ReplicaBuild``): pages go
  in, one transaction each, without secondary indexes and without fsync; the changes since the
  first page are staged in the same file; at the checkpoint the indexes are built, the staged
  changes applied, every reference and the unique code index checked, the rows counted and their
  hashes summed (a full read of the new file, which nobody else uses yet), compared with the
  cloud's checkpoint, the file sealed and fsynced, and only then the pointer switched. The door
  reads the old replica throughout and notices the switch within a frame (``follow_replica``).
  The journal's database is never written for any of this.
- **Changes** since the replica's version are staged in the replica file in use, then applied in
  one write transaction of that file (WAL: the door goes on reading the previous state, and its
  commits go to the journal's file). The checkpoint is verified without reading the whole
  replica: the file keeps its own count and hash sum (``replica_meta``), and the transaction sums
  only the rows the changes touch (with the memberships a deleted member or plan takes along),
  before and after. A replica whose rows drifted from that record is caught by the full checksum
  the sync agent computes for its heartbeat (``replica_checksum`` against
  ``stored_replica_totals``), which leads to a fresh snapshot.
- ``replace_replica`` (the demo, the bench, tests) builds and switches a file in one go.

Phases of a build and a switch are told to the store's ``on_replica_phase`` observer
(``kiosk.data.database.REPLICA_PHASES``): the kill tests stop a writer at each one.

Failure modes: database failures raise ``StoreError`` (``kiosk.data.database``), and a write that
fails leaves the replica in use exactly as it was (a build is deleted; changes are one
transaction). ``apply_checkpoint`` also refuses, without raising, a result whose count or checksum
differs from the cloud's checkpoint (``ApplyResult.ok`` False: changes rolled back, a snapshot
deleted). ValueError for a naive ``datetime``, a tombstone where only live rows belong, or an
unknown kind. SQL text is built only from this module's constant table and column lists (hence
the ``noqa: S608`` marks); every value goes through a placeholder.
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
from pathlib import Path

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
from kiosk.core.passes import PassRecord
from kiosk.data.database import (
    REPLICA,
    SUM_HALVES,
    Database,
    ReplicaBuild,
    StoreError,
    WriterLock,
    combine_halves,
    end_quietly,
    foreign_key_problem,
    record_totals,
    replica_format,
    replica_sums,
    sqlite_uri,
    utc_text,
)
from kiosk.data.door_path import DOOR_PATH_QUERIES
from kiosk.data.migrations import REPLICA_FORMAT, REPLICA_KIND_TABLES
from sync.passes import public_key_from_text, public_key_text
from sync.protocol import KIND_ORDER, KINDS, Checkpoint, ReplicaRow, utc_from_text


@dataclass(frozen=True)
class ReplicaSnapshot:
    """A complete replica as delivered by the cloud (or the demo seeder).

    ``members`` pairs each member with the keyed hash of its QR code (``credentials.code_hash``);
    the usable code itself is never stored. ``version`` is the cloud's replica version,
    ``synced_at`` the server time of the pull (timezone-aware; None when unknown) and
    ``code_salt`` the key those hashes were made with. ``passes`` are the members' phone passes
    (public keys only; ``revoked`` ones are kept with status REVOKED).
    """

    members: Sequence[tuple[Member, str]]
    memberships: Sequence[Membership]
    plans: Sequence[Plan]
    opening_hours: Sequence[AccessWindow]
    closures: Sequence[Closure]
    version: int
    synced_at: datetime | None
    code_salt: bytes
    passes: Sequence[PassRecord] = ()


# -- the replica's SQL ----------------------------------------------------------------------------

# Each protocol kind's data columns (named like the row's data keys; a plan's windows live in
# plan_windows). Every table also has ``id`` and ``row_hash`` (kiosk.data.migrations). Keys the
# protocol's normal form may leave out (``_OPTIONAL_KEYS``) are stored as NULL then.
_KIND_COLUMNS = {
    "plan": ("name", "max_visits_per_day"),
    "member": ("organization_id", "first_name", "last_name", "status", "is_staff", "code_hash"),
    "membership": ("member_id", "plan_id", "type", "start_date", "end_date", "remaining_classes"),
    "pass": ("member_id", "organization_id", "public_key", "period_s", "status"),
    "hours": ("weekday", "open_minute", "close_minute"),
    "closure": ("start_date", "end_date", "reason"),
}
_WINDOW_INSERT = (
    "INSERT INTO plan_windows (plan_id, weekday, start_minute, end_minute) VALUES (?, ?, ?, ?)"
)
_META_UPSERT = (
    "INSERT INTO replica_meta (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _insert_sql(kind: str, *, upsert: bool) -> str:
    columns = ("id", *_KIND_COLUMNS[kind], "row_hash")
    marks = ", ".join("?" for _ in columns)
    table = REPLICA_KIND_TABLES[kind]
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
    if upsert:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        sql += f" ON CONFLICT (id) DO UPDATE SET {updates}"
    return sql


def _json_insert_sql(table: str, columns: Sequence[str]) -> str:
    """An INSERT of ``columns`` into ``table`` from one parameter: a JSON array of rows, each an
    array of the column values in order (``json_each``, in the array's order). One statement for
    a whole page: the row loop runs inside SQLite, which releases Python's interpreter lock once
    rather than once per row (with the page prefetch thread running, a lock taken back per row
    cost milliseconds each)."""
    picks = ", ".join(f"json_extract(value, '$[{n}]')" for n in range(len(columns)))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {picks}"  # noqa: S608
        " FROM json_each(?) ORDER BY key"
    )


_PAGE_INSERT = {
    kind: _json_insert_sql(table, ("id", *_KIND_COLUMNS[kind], "row_hash"))
    for kind, table in REPLICA_KIND_TABLES.items()
}
_WINDOWS_INSERT = _json_insert_sql(
    "plan_windows", ("plan_id", "weekday", "start_minute", "end_minute")
)


# A plan without a visit limit leaves the key out (sync.protocol: its hash stays protocol 2's).
_OPTIONAL_KEYS = frozenset({"max_visits_per_day"})


def _row_values(row: ReplicaRow, hashed: int) -> tuple:
    data = row.data
    if data is None:
        raise ValueError(f"{row.kind} {row.id}: a tombstone has no values to store")
    values = (data.get(c) if c in _OPTIONAL_KEYS else data[c] for c in _KIND_COLUMNS[row.kind])
    return (row.id, *values, hashed)


def _hashed(rows: Iterable[ReplicaRow], tally: list[int]) -> Iterator[tuple]:
    """Column values of ``rows`` with their row hashes, counting them in ``tally[0]`` (streams, so
    ``executemany`` never holds more than one row)."""
    for row in rows:
        tally[0] += 1
        yield _row_values(row, row.row_hash())


def _known_kind(kind: str) -> str:
    if kind not in REPLICA_KIND_TABLES:
        raise ValueError(f"unknown replica kind {kind!r}")
    return kind


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
        data: dict[str, object] = {"name": plan.name, "windows": windows}
        if plan.max_visits_per_day is not None:  # the normal form leaves "no limit" out
            data["max_visits_per_day"] = plan.max_visits_per_day
        yield ReplicaRow("plan", plan.id, data)
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
    for record in snapshot.passes:
        yield ReplicaRow("pass", record.pass_id, pass_data(record))
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


def pass_data(record: PassRecord) -> dict[str, object]:
    """A pass as the protocol's row data (kind ``pass``): the key as its wire text, the status
    ``REVOKED`` or ``ACTIVE``. Raises ValueError for a key that is not 32 bytes."""
    return {
        "member_id": record.member_id,
        "organization_id": record.organization_id,
        "public_key": public_key_text(record.public_key),
        "period_s": int(record.period_s),
        "status": "REVOKED" if record.revoked else "ACTIVE",
    }


def _pass_record(row: Sequence) -> PassRecord:
    """A ``passes`` row (``find_pass``'s columns) as a ``PassRecord``. A key that does not decode
    (it was checked on the way in, so only a damaged file) becomes empty bytes, which no signature
    verifies with: the door then answers bad_signature rather than failing."""
    try:
        key = public_key_from_text(row[3])
    except ValueError:
        key = b""
    return PassRecord(
        pass_id=str(row[0]),
        member_id=str(row[1]),
        organization_id=str(row[2]),
        public_key=key,
        period_s=int(row[4]),
        revoked=row[5] == "REVOKED",
    )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``Store.apply_checkpoint`` did. ``ok`` is True when the count and checksum matched
    ``checkpoint`` and the new replica is in use; False means nothing changed (changes rolled back,
    a snapshot's file deleted). ``checksum`` is None when a row had no hash (a replica loaded before
    schema 3). ``applied`` counts the staged changes applied. ``write_ms`` is how long the apply
    took: for changes, the write transaction on the replica file in use; for a snapshot, from its
    checkpoint to the switch (indexes, staged changes, checks, sums, fsync, switch). The door's
    commits wait for none of it (another file), nor do its reads (WAL, or a file not in use yet).
    ``switch_ms`` (snapshots only) is the switch itself: the pointer written, renamed, fsynced."""

    ok: bool
    count: int
    checksum: str | None
    checkpoint: Checkpoint
    applied: int
    write_ms: float
    switch_ms: float | None = None


class _ChecksumMismatch(Exception):
    """Raised inside a write transaction to roll it back; never leaves the store."""

    def __init__(self, count: int, checksum: str | None, applied: int) -> None:
        super().__init__("checksum mismatch")
        self.count = count
        self.checksum = checksum
        self.applied = applied


def _hex(total: int | None) -> str | None:
    return None if total is None else f"{total:016x}"


def _replica_meta(conn: sqlite3.Connection, schema: str = "main") -> dict[str, str]:
    """The replica's facts (``version``, ``synced_at``, ``code_salt``, ``count``, ``checksum``)
    as stored, by key."""
    return {
        str(key): str(value)
        for key, value in conn.execute(f"SELECT key, value FROM {schema}.replica_meta")  # noqa: S608
    }


def _date_or_none(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


# -- writing rows (inside a transaction of the caller's, on a replica file's own connection) -------


def _insert_rows(conn: sqlite3.Connection, rows: Iterable[ReplicaRow], *, upsert: bool) -> int:
    """Write ``rows`` (no tombstones), one ``executemany`` per run of one kind, hashing each row on
    the way. Returns the row count."""
    written = 0
    for kind, group in itertools.groupby(rows, key=lambda row: _known_kind(row.kind)):
        if kind == "plan":
            # Few rows, and each carries its windows: one by one.
            for row in group:
                _write_plan(conn, row, upsert=upsert)
                written += 1
            continue
        tally = [0]
        conn.executemany(_insert_sql(kind, upsert=upsert), _hashed(group, tally))
        written += tally[0]
    return written


def _write_plan(conn: sqlite3.Connection, row: ReplicaRow, *, upsert: bool) -> None:
    assert row.data is not None
    conn.execute(_insert_sql("plan", upsert=upsert), _row_values(row, row.row_hash()))
    if upsert:
        conn.execute("DELETE FROM plan_windows WHERE plan_id = ?", (row.id,))
    conn.executemany(_WINDOW_INSERT, ((row.id, w[0], w[1], w[2]) for w in row.data["windows"]))


_Page = list[tuple[str, str, str | None]]


def _page_values(rows: Iterable[ReplicaRow]) -> tuple[_Page, int]:
    """A snapshot page's column values, hashed before any transaction begins (the hashing is most
    of the cost of a page): runs of one kind, each as the JSON its ``_PAGE_INSERT`` takes, with,
    for plans, their windows' JSON. Raises ValueError for a tombstone or an unknown kind. Memory:
    one page."""
    page: _Page = []
    count = 0
    for kind, group in itertools.groupby(rows, key=lambda row: _known_kind(row.kind)):
        values, windows = [], []
        for row in group:
            values.append(_row_values(row, row.row_hash()))
            if kind == "plan":
                assert row.data is not None
                windows.extend((row.id, w[0], w[1], w[2]) for w in row.data["windows"])
        page.append((kind, _json(values), _json(windows) if windows else None))
        count += len(values)
    return page, count


def _json(values: list[tuple]) -> str:
    return json.dumps(values, separators=(",", ":"))


def _apply_staged(conn: sqlite3.Connection) -> int:
    """Apply every staged change: tombstones first (children before parents), then upserts
    (parents before children). Returns how many changes were applied; the caller's transaction
    (with foreign keys deferred) makes them all or none."""
    applied = 0
    # A code may move from one member to another between two versions; clearing the changing
    # members' codes first means the unique index only ever sees the end state.
    conn.execute(
        "UPDATE members SET code_hash = NULL"
        " WHERE id IN (SELECT id FROM staged_changes WHERE kind = 'member')"
    )
    deletions = conn.execute(
        "SELECT kind, id FROM staged_changes WHERE deleted = 1 ORDER BY kind_rank DESC, ord"
    ).fetchall()
    for kind, row_id in deletions:
        if kind == "plan":
            conn.execute("DELETE FROM plan_windows WHERE plan_id = ?", (row_id,))
        table = REPLICA_KIND_TABLES[_known_kind(kind)]
        conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))  # noqa: S608
        applied += 1
    for kind in KINDS:
        rows = (
            ReplicaRow(kind, row_id, json.loads(data))
            for row_id, data in conn.execute(
                "SELECT id, data FROM staged_changes WHERE deleted = 0 AND kind = ? ORDER BY ord",
                (kind,),
            )
        )
        applied += _insert_rows(conn, rows, upsert=True)
    return applied


# The rows a change set can alter: those staged, and the memberships a deleted or changed member
# or plan takes along (ON DELETE CASCADE, SET NULL). A temporary table of the writer's connection.
_AFFECTED = (
    "CREATE TEMP TABLE IF NOT EXISTS affected"
    " (kind TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID",
    "DELETE FROM temp.affected",
    "INSERT OR IGNORE INTO temp.affected (kind, id) SELECT kind, id FROM staged_changes",
    "INSERT OR IGNORE INTO temp.affected (kind, id) SELECT 'membership', id FROM memberships"
    " WHERE member_id IN (SELECT id FROM staged_changes WHERE kind = 'member')",
    "INSERT OR IGNORE INTO temp.affected (kind, id) SELECT 'membership', id FROM memberships"
    " WHERE plan_id IN (SELECT id FROM staged_changes WHERE kind = 'plan')",
)


def _affected_sums(conn: sqlite3.Connection) -> tuple[int, int, bool]:
    """Count, sum of row hashes (mod 2**64) and whether every one has a hash, of the rows listed
    in ``temp.affected`` as they are now: a primary-key lookup each."""
    count = low = high = 0
    complete = True
    for kind, table in REPLICA_KIND_TABLES.items():
        rows, hashed, low_sum, high_sum = conn.execute(
            f"SELECT COUNT(*), COUNT(row_hash), {SUM_HALVES} FROM {table}"  # noqa: S608
            " WHERE id IN (SELECT id FROM temp.affected WHERE kind = ?)",
            (kind,),
        ).fetchone()
        count += rows
        complete = complete and hashed == rows
        low += low_sum or 0
        high += high_sum or 0
    return count, combine_halves(low, high), complete


def _stored_totals(conn: sqlite3.Connection) -> tuple[int, int | None] | None:
    """The replica file's own record of its count and hash sum; None when it keeps none."""
    meta = _replica_meta(conn)
    if "count" not in meta:
        return None
    total = meta.get("checksum")
    return int(meta["count"]), None if total is None else int(total, 16)


# -- the replica's part of the store ---------------------------------------------------------------


class Replica(Database):
    """The replica's reads and writes, mixed into ``kiosk.data.store.Store`` (one connection, one
    lock: ``Database``). Reads go through the store's connection (the replica attached as
    ``replica``); writes through connections of the replica files' own: the snapshot being built
    (``ReplicaBuild``) and a writer on the file in use. Every method raises ``StoreError`` on
    database failures."""

    # A snapshot being built by this store, and this store's writer on the replica file in use.
    _build: ReplicaBuild | None = None
    _writer: sqlite3.Connection | None = None
    _writer_file: Path | None = None

    def close(self) -> None:
        """Close the connection; a snapshot being built is abandoned (its file deleted). Safe to
        call more than once."""
        with self._lock:
            self._drop_build()
            self._close_writer()
        super().close()

    # -- the connections that write replica files -------------------------------------------------

    def _replica_phase(self, name: str) -> None:
        if self._on_replica_phase is not None:
            self._on_replica_phase(name)

    def _start_build(self) -> ReplicaBuild:
        self._drop_build()
        self._build = ReplicaBuild.start(
            self._replica_files,
            WriterLock(self._replica_files.lock_path),
            wait_s=self._busy_timeout_ms / 1000,
            on_phase=self._on_replica_phase,
        )
        return self._build

    def _drop_build(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            build.abandon()

    def _need_build(self, action: str) -> ReplicaBuild:
        if self._build is None:
            raise StoreError(
                f"cannot {action}: no snapshot is being built in this store (begin_snapshot "
                f"starts one); the replica in use is unchanged",
                path=self._path,
            )
        return self._build

    def _switched(self, build: ReplicaBuild) -> float:
        """Seal and switch ``build`` in; this store reads it from now on. Returns the switch's
        ms."""
        switch_ms = build.publish()
        self._build = None
        self._close_writer()
        self._follow_replica(self._live())
        return switch_ms

    def _live_writer(self) -> sqlite3.Connection | None:
        """A read-write connection on the replica file in use (None: there is none), opened on
        first use and again after a switch: WAL with ``synchronous=NORMAL`` (a power cut may lose
        its last change, never corrupt it), foreign keys on. Raises sqlite3.Error, OSError,
        ValueError (an unusable pointer)."""
        current = self._replica_files.current()
        if current is None:
            self._close_writer()
            return None
        if self._writer is not None and self._writer_file == current:
            return self._writer
        self._close_writer()
        conn = sqlite3.connect(
            f"{sqlite_uri(current, readonly=False)}?mode=rw",
            uri=True,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            if replica_format(conn) != REPLICA_FORMAT:
                raise sqlite3.DatabaseError(f"{current} is not a replica file of this release")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA temp_store = MEMORY")
        except BaseException:
            conn.close()
            raise
        self._writer, self._writer_file = conn, current
        return conn

    def _close_writer(self) -> None:
        if self._writer is not None:
            conn, self._writer, self._writer_file = self._writer, None, None
            conn.close()

    def _pointer_error(self, err: ValueError) -> StoreError:
        return StoreError(f"{err}; the sync agent takes a fresh snapshot", path=self._path)

    # -- a whole replica at once (the demo, the bench, tests) ------------------------------------

    def replace_replica(self, snapshot: ReplicaSnapshot) -> None:
        """Replace the whole replica (every row, its version, sync time and code salt) with
        ``snapshot``: built in a new replica file and switched in (the sync agent builds its
        snapshots page by page instead). Rows are streamed (``executemany`` over generators), so
        memory does not grow with the member count. Each row gets its protocol id and row hash
        (``snapshot_rows``), so a seeded replica has a valid checksum.

        Raises StoreError (and keeps the previous replica in use) when the snapshot breaks the
        schema (duplicate ids or code hashes, a membership of an unknown member or plan, a value
        out of range) or the write fails; ValueError for a naive ``synced_at``.
        """
        meta = [("version", str(int(snapshot.version))), ("code_salt", snapshot.code_salt.hex())]
        if snapshot.synced_at is not None:
            meta.append(("synced_at", utc_text(snapshot.synced_at, "snapshot.synced_at")))
        with (
            self._lock,
            self._guard(
                "replace the replica", "replica NOT replaced, the previous one is still in use"
            ),
        ):
            self._refuse_if_readonly(
                "replace the replica", "replica NOT replaced, the previous one is still in use"
            )
            build = self._start_build()
            try:
                conn = build.live()
                conn.execute("BEGIN")
                try:
                    _insert_rows(conn, snapshot_rows(snapshot), upsert=False)
                    conn.executemany(_META_UPSERT, meta)
                    conn.execute("COMMIT")
                except BaseException:
                    end_quietly(conn, "ROLLBACK")
                    raise
                self._check_and_total(build)
                self._switched(build)
            except BaseException:
                self._drop_build()
                raise

    @staticmethod
    def _check_and_total(build: ReplicaBuild) -> tuple[int, int | None]:
        """Indexes, every reference and the unique codes of a filled build; its totals recorded.
        Raises sqlite3.IntegrityError for a broken rule."""
        build.add_indexes(unique_codes=True)
        conn = build.live()
        if (problem := foreign_key_problem(conn)) is not None:
            raise sqlite3.IntegrityError(f"the new replica breaks a rule of the schema: {problem}")
        count, total = replica_sums(conn)
        record_totals(conn, count, total)
        return count, total

    # -- replica sync (the agent's side: snapshots, staged changes, checkpoints) -----------------

    def begin_snapshot(self) -> None:
        """Start a fresh snapshot in a new replica file (an earlier one of this store is
        abandoned; files a killed writer left behind are deleted). The replica in use is not
        touched. Holds the replica writers' lock until ``apply_checkpoint(into_snapshot=True)`` or
        ``abandon_snapshot``. Raises StoreError when the file cannot be made, or another process
        keeps the writers' lock for longer than the busy timeout."""
        with self._lock, self._guard("start a replica snapshot", "the replica in use is unchanged"):
            self._refuse_if_readonly("start a replica snapshot", "the replica in use is unchanged")
            self._start_build()

    def abandon_snapshot(self) -> None:
        """Give up the snapshot being built (its file is deleted, the writers' lock dropped).
        Nothing happens when none is. Never raises."""
        with self._lock:
            self._drop_build()

    def add_snapshot_rows(self, rows: Iterable[ReplicaRow]) -> int:
        """Add one snapshot page's rows to the snapshot being built, in one transaction of its
        file (the journal's file is not touched). Returns how many rows were added. Memory is
        bounded by the page: call once per page.

        Raises ValueError for a tombstone or an unknown kind (a snapshot holds live rows only)
        before anything is written, and StoreError when the write fails, a row repeats an id
        already in the snapshot (the cloud's cursor went wrong), or no snapshot is being built:
        then none of this page is added, and the replica in use is unchanged.
        """
        page, count = _page_values(rows)
        with self._lock, self._guard("add a snapshot page", "the page was not added"):
            build = self._need_build("add a snapshot page")
            conn = build.live()
            conn.execute("BEGIN")
            try:
                for kind, values, windows in page:
                    conn.execute(_PAGE_INSERT[kind], (values,))
                    if windows is not None:
                        conn.execute(_WINDOWS_INSERT, (windows,))
                conn.execute("COMMIT")
            except BaseException:
                end_quietly(conn, "ROLLBACK")
                raise
            build.bound_unsynced()
        self._replica_phase("build:rows")
        return count

    def stage_changes(self, rows: Iterable[ReplicaRow], *, into_snapshot: bool = False) -> int:
        """Stage one change page (rows and tombstones) until its checkpoint arrives: in the
        replica file in use, or with ``into_snapshot`` in the snapshot being built (the changes
        since its first page). A later change of the same row replaces the earlier one. Row hashes
        are computed here, from the parsed data. Returns how many rows were staged. Raises
        ValueError for an unknown kind and StoreError when the write fails, or there is no replica
        (or no snapshot) to stage for: then nothing of this page is staged."""
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
        with self._lock, self._guard("stage replica changes", "the changes were not staged"):
            conn = self._staging_connection(into_snapshot, "stage replica changes")
            conn.execute("BEGIN IMMEDIATE")
            try:
                (top,) = conn.execute("SELECT COALESCE(MAX(ord), 0) FROM staged_changes").fetchone()
                conn.executemany(
                    "INSERT INTO staged_changes (kind, id, ord, kind_rank, deleted, data, row_hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (kind, id) DO UPDATE SET ord = excluded.ord,"
                    " deleted = excluded.deleted, data = excluded.data,"
                    " row_hash = excluded.row_hash",
                    (
                        (kind, row_id, top + n, rank, deleted, data, hashed)
                        for n, (kind, row_id, rank, deleted, data, hashed) in enumerate(staged, 1)
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                end_quietly(conn, "ROLLBACK")
                raise
        return len(staged)

    def _staging_connection(self, into_snapshot: bool, action: str) -> sqlite3.Connection:
        self._refuse_if_readonly(action, "nothing was changed")
        if into_snapshot:
            return self._need_build(action).live()
        try:
            conn = self._live_writer()
        except ValueError as err:
            raise self._pointer_error(err) from err
        if conn is None:
            raise StoreError(
                f"cannot {action}: there is no replica yet beside {self._path} (a snapshot comes "
                f"first); nothing was changed",
                path=self._path,
            )
        return conn

    def discard_staged(self) -> None:
        """Forget changes staged in the replica file in use (an interrupted pull). Nothing to do
        when there is no replica. Raises StoreError when the write fails."""
        with self._lock, self._guard("discard staged replica changes", "nothing was changed"):
            self._refuse_if_readonly("discard staged replica changes", "nothing was changed")
            try:
                conn = self._live_writer()
            except ValueError as err:
                raise self._pointer_error(err) from err
            if conn is not None:
                conn.execute("DELETE FROM staged_changes")

    def apply_checkpoint(
        self,
        checkpoint: Checkpoint,
        *,
        code_salt: bytes,
        synced_at: datetime,
        into_snapshot: bool,
    ) -> ApplyResult:
        """Apply the staged changes and move the replica to ``checkpoint``, all or nothing.

        Without ``into_snapshot``: one write transaction of the replica file in use applies every
        staged change (upserts; tombstones delete, and deleting a row that is not there is a
        no-op), computes the new count and hash sum from the file's own record and the rows the
        changes touched, and, if either differs from ``checkpoint``, rolls back and returns
        ``ok=False`` (the replica and its staged changes exactly as before). Otherwise it records
        the version, ``synced_at`` and ``code_salt`` and clears the staged changes. The door reads
        the previous state until the commit and the new one after it, never a mix.

        With ``into_snapshot``: the snapshot being built is finished (indexes, staged changes,
        every reference and the unique codes checked, all rows counted and summed) and, when it
        matches ``checkpoint``, sealed and switched in; when it does not, its file is deleted and
        ``ok=False`` returned. The door reads the old replica until the switch.

        Raises StoreError when the write fails or the new replica breaks a rule of the schema (a
        membership of a member that is not there, two members with one code): nothing changed, a
        snapshot's file deleted. ValueError for a naive ``synced_at``.
        """
        meta = (
            ("version", str(int(checkpoint.version))),
            ("code_salt", code_salt.hex()),
            ("synced_at", utc_text(synced_at, "synced_at")),
        )
        started = time.perf_counter()
        try:
            if into_snapshot:
                return self._finish_snapshot(checkpoint, meta, started)
            return self._apply_changes(checkpoint, meta, started)
        except _ChecksumMismatch as mismatch:
            return ApplyResult(
                ok=False,
                count=mismatch.count,
                checksum=mismatch.checksum,
                checkpoint=checkpoint,
                applied=mismatch.applied,
                write_ms=(time.perf_counter() - started) * 1e3,
            )

    def _apply_changes(
        self, checkpoint: Checkpoint, meta: tuple[tuple[str, str], ...], started: float
    ) -> ApplyResult:
        with (
            self._lock,
            self._guard(
                "apply replica changes", "replica NOT changed, the previous one is still in use"
            ),
        ):
            conn = self._staging_connection(False, "apply replica changes")
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Within one checkpoint rows may pass through states the schema forbids (a child
                # applied before the parent it now points to); only the end state must hold.
                conn.execute("PRAGMA defer_foreign_keys = ON")
                stored = _stored_totals(conn)
                for statement in _AFFECTED:
                    conn.execute(statement)
                before = _affected_sums(conn)
                applied = _apply_staged(conn)
                after = _affected_sums(conn)
                count = (stored[0] if stored else 0) - before[0] + after[0]
                total = None
                if stored is not None and stored[1] is not None and before[2] and after[2]:
                    total = (stored[1] - before[1] + after[1]) % (1 << 64)
                summed = _hex(total)
                if stored is None or count != checkpoint.count or summed != checkpoint.checksum:
                    raise _ChecksumMismatch(count, summed, applied)
                conn.executemany(_META_UPSERT, meta)
                record_totals(conn, count, total)
                conn.execute("DELETE FROM staged_changes")
                self._replica_phase("changes:applied")
                conn.execute("COMMIT")
            except BaseException:
                end_quietly(conn, "ROLLBACK")
                raise
        self._replica_phase("changes:committed")
        return ApplyResult(
            ok=True,
            count=count,
            checksum=summed,
            checkpoint=checkpoint,
            applied=applied,
            write_ms=(time.perf_counter() - started) * 1e3,
        )

    def _finish_snapshot(
        self, checkpoint: Checkpoint, meta: tuple[tuple[str, str], ...], started: float
    ) -> ApplyResult:
        with (
            self._lock,
            self._guard(
                "finish the replica snapshot",
                "replica NOT replaced, the previous one is still in use",
            ),
        ):
            build = self._need_build("finish the replica snapshot")
            try:
                conn = build.live()
                # Indexes first: deleting a member looks its memberships up by member_id.
                build.add_indexes(unique_codes=False)
                build.phase("build:indexed")
                # Foreign keys on, so that a tombstone takes a member's memberships along exactly
                # as on the replica in use; every reference is checked in full below (pages were
                # written with them off, so the deferred count alone proves nothing).
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("BEGIN")
                try:
                    conn.execute("PRAGMA defer_foreign_keys = ON")
                    applied = _apply_staged(conn)
                    conn.execute("DELETE FROM staged_changes")
                    conn.execute("COMMIT")
                except BaseException:
                    end_quietly(conn, "ROLLBACK")
                    raise
                finally:
                    conn.execute("PRAGMA foreign_keys = OFF")
                count, total = self._check_and_total(build)
                summed = _hex(total)
                if count != checkpoint.count or summed != checkpoint.checksum:
                    raise _ChecksumMismatch(count, summed, applied)
                conn.executemany(_META_UPSERT, meta)
                build.phase("build:checked")
                switch_ms = self._switched(build)
            except BaseException:
                self._drop_build()
                raise
        return ApplyResult(
            ok=True,
            count=count,
            checksum=summed,
            checkpoint=checkpoint,
            applied=applied,
            write_ms=(time.perf_counter() - started) * 1e3,
            switch_ms=switch_ms,
        )

    def replica_checksum(self) -> tuple[int, str | None]:
        """``(count, checksum)`` of the replica in use as the protocol defines them
        (docs/sync-protocol.md), from every row: checksum None means unknown (rows loaded before
        schema 3 carry no hash), and the agent then takes a fresh snapshot. A full read of the
        replica (tens of ms per 100,000 members), which blocks nobody."""
        with self._read("compute the replica's checksum") as conn:
            count, total = replica_sums(conn, REPLICA)
        return count, _hex(total)

    def stored_replica_totals(self) -> tuple[int, str | None] | None:
        """The replica file's own record of its ``(count, checksum)``, kept up to date by every
        change applied (None: it keeps none, as an empty replica or one carried over without
        hashes). Different from ``replica_checksum`` means the rows drifted from what was
        verified: the sync agent takes a fresh snapshot then."""
        with self._read("read the replica's record of itself") as conn:
            meta = _replica_meta(conn, REPLICA)
        if "count" not in meta:
            return None
        return int(meta["count"]), meta.get("checksum")

    def mark_replica_current(self, *, synced_at: datetime) -> None:
        """Record that the cloud confirmed the replica is current (a 304 to the idle poll): its
        sync time moves, its version and rows stay. Nothing to do when there is no replica yet.
        Raises StoreError when the write fails."""
        at = utc_text(synced_at, "synced_at")
        with (
            self._lock,
            self._guard("record the replica's sync time", "the sync time is unchanged"),
        ):
            self._refuse_if_readonly("record the replica's sync time", "the sync time is unchanged")
            try:
                conn = self._live_writer()
            except ValueError as err:
                raise self._pointer_error(err) from err
            if conn is not None:
                conn.execute(_META_UPSERT, ("synced_at", at))

    def replica_info(self) -> ReplicaInfo:
        """The replica's version (0 = never loaded) and the server time of its last pull (None =
        never)."""
        with self._read("read the replica's version") as conn:
            meta = _replica_meta(conn, REPLICA)
        synced_at = meta.get("synced_at")
        return ReplicaInfo(
            version=int(meta.get("version", "0")),
            synced_at=None if synced_at is None else utc_from_text(synced_at),
        )

    def replica_summary(self) -> tuple[ReplicaInfo, int]:
        """``replica_info()`` and ``member_count()`` read in one snapshot of one replica file
        (two calls could straddle a switch)."""
        with self._read("read the replica's version and size") as conn:
            meta = _replica_meta(conn, REPLICA)
            (count,) = conn.execute(f"SELECT COUNT(*) FROM {REPLICA}.members").fetchone()  # noqa: S608
        synced_at = meta.get("synced_at")
        info = ReplicaInfo(
            version=int(meta.get("version", "0")),
            synced_at=None if synced_at is None else utc_from_text(synced_at),
        )
        return info, int(count)

    def code_salt(self) -> bytes:
        """The key the replica's code hashes were made with; empty bytes when no replica yet."""
        with self._read("read the replica's code salt") as conn:
            meta = _replica_meta(conn, REPLICA)
        return bytes.fromhex(meta.get("code_salt", ""))

    def member_count(self) -> int:
        """How many members the replica holds."""
        with self._read("count the replica's members") as conn:
            (count,) = conn.execute(f"SELECT COUNT(*) FROM {REPLICA}.members").fetchone()  # noqa: S608
        return int(count)

    # -- door path -------------------------------------------------------------------------------

    def find_member_id(self, code_hash: str) -> str | None:
        """The id of the member whose QR code hashes to ``code_hash``, or None."""
        with self._read("look up a member") as conn:
            row = conn.execute(DOOR_PATH_QUERIES["find_member_id"], (code_hash,)).fetchone()
        return None if row is None else str(row[0])

    def find_pass(self, pass_id: str) -> PassRecord | None:
        """The phone pass ``pass_id`` (8 base32 characters) as the replica holds it, revoked
        ones included (``revoked`` True), or None when the replica has no such pass."""
        with self._read("look up a phone pass") as conn:
            row = conn.execute(DOOR_PATH_QUERIES["find_pass"], (pass_id,)).fetchone()
        return None if row is None else _pass_record(row)

    def pass_lookup(self, pass_id: str, step: int) -> tuple[PassRecord | None, bool]:
        """``(find_pass(pass_id), pass_used(pass_id, step))`` in one read transaction: what the
        door needs to check a scanned pass code (``kiosk.core.passes.check_pass``). Two
        primary-key lookups, one in the replica, one in the journal's replay memory."""
        with self._read("look up a phone pass") as conn:
            row = conn.execute(DOOR_PATH_QUERIES["find_pass"], (pass_id,)).fetchone()
            used = conn.execute(DOOR_PATH_QUERIES["pass_used"], (pass_id, int(step))).fetchone()
        return (None if row is None else _pass_record(row)), used is not None

    def pass_count(self) -> int:
        """How many phone passes the replica holds, revoked ones included."""
        with self._read("count the replica's passes") as conn:
            (count,) = conn.execute(f"SELECT COUNT(*) FROM {REPLICA}.passes").fetchone()  # noqa: S608
        return int(count)

    def member_facts(
        self, member_id: str, door_id: str, *, entries_since: datetime | None = None
    ) -> MemberFacts | None:
        """What the access policy needs about one member, read in one snapshot: the member, its
        memberships (in the cloud's order), the plans they reference with their windows and
        visit limits, the classes used that the replica's balances do not include yet (by
        membership id; memberships without any are absent): check-ins still pending upload, and
        uploaded ones whose cloud version is newer than the replica's, never an annulled grant's;
        the newest granted, not annulled check-in of this member at ``door_id``; and, with
        ``entries_since``, the wall times of its granted, not annulled check-ins at ``door_id``
        from then on, newest first (for a plan's visit limit: read newest first down the passback
        index, stopping at the first older one, so the cost is the member's recent visits, not
        its history). None when the replica has no such member. ValueError for a naive
        ``entries_since``."""
        since = None if entries_since is None else utc_text(entries_since, "entries_since")
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
                plans[ms.plan_id] = Plan(
                    id=ms.plan_id,
                    name=plan_row[0],
                    windows=windows,
                    max_visits_per_day=None if plan_row[1] is None else int(plan_row[1]),
                )
            pending_uses = {
                str(membership_id): int(total)
                for membership_id, total in conn.execute(
                    DOOR_PATH_QUERIES["pending_uses"], (member_id,)
                )
                if total
            }
            entry = conn.execute(DOOR_PATH_QUERIES["last_entry"], (member_id, door_id)).fetchone()
            recent: list[datetime] = []
            if since is not None:
                # Newest first by seq; a row older than ``since`` ends the walk (the clock may
                # have stepped, but a visit counted a day late is not worth reading the history).
                for (wall_text,) in conn.execute(
                    DOOR_PATH_QUERIES["recent_entries"], (member_id, door_id)
                ):
                    if wall_text < since:
                        break
                    recent.append(utc_from_text(wall_text))
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
            recent_entries=tuple(recent),
        )

    def site_facts(self) -> SiteFacts:
        """The facility's opening hours (by weekday and time) and closures (by start date)."""
        with self._read("read the opening hours and closures") as conn:
            hours = tuple(
                AccessWindow(weekday=r[0], start_minute=r[1], end_minute=r[2])
                for r in conn.execute(
                    "SELECT weekday, open_minute, close_minute"  # noqa: S608
                    f" FROM {REPLICA}.opening_hours ORDER BY weekday, open_minute"
                )
            )
            closures = tuple(
                Closure(
                    start_date=date.fromisoformat(r[0]),
                    end_date=date.fromisoformat(r[1]),
                    reason=r[2],
                )
                for r in conn.execute(
                    f"SELECT start_date, end_date, reason FROM {REPLICA}.closures"  # noqa: S608
                    " ORDER BY start_date"
                )
            )
        return SiteFacts(opening_hours=hours, closures=closures)
