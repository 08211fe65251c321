"""The local store: the one module that owns SQL (DESIGN §7).

One SQLite file, shared by the scanner, the sync agent and the owner page (three processes), in WAL
mode so readers never block the door. It holds two things of different worth:

- the **replica** (members, memberships, plans, hours, closures): a copy of the cloud's data, always
  replaced whole in one transaction, and always rebuildable by pulling it again;
- the **journal** (check-ins): facts recorded at the door, the one thing that cannot be rebuilt.
  Every row is committed with ``synchronous=FULL`` before the door acts, carries a UUIDv7 id (the
  idempotency key for the cloud) and a gap-free per-device sequence number, and is never deleted
  while it is still pending upload.

Every failure that leaves this module is a ``StoreError`` whose message names the database file,
what was lost (if anything) and what to do. Nothing here deletes or recreates an existing file: a
damaged database is left exactly as found, so its journal can still be recovered.

Times are stored as fixed-width ISO-8601 UTC text with microseconds
(``2024-05-01T17:03:09.120000Z``), so string order is time order; they come back as timezone-aware
UTC ``datetime`` values. Dates are ISO ``YYYY-MM-DD`` text.

SQL text is built only from this module's constant column lists (hence the ``noqa: S608`` marks);
every value, and above all anything derived from a scanned code, goes through a placeholder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kiosk.core import ids
from kiosk.core.model import (
    AccessWindow,
    Checkin,
    ClockQuality,
    Closure,
    Decision,
    LastEntry,
    Member,
    MemberFacts,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    Plan,
    Reason,
    ReplicaInfo,
    SiteFacts,
    SyncState,
    Verdict,
)
from kiosk.data.migrations import LATEST_VERSION, apply_migrations, schema_version
from sync.protocol import KIND_ORDER, KINDS, MAX_ANCHORS, Anchor, Checkpoint, ReplicaRow

# Three processes share the file; a writer waits this long for another's write to finish.
DEFAULT_BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """A database failure in plain words: which file, what was lost, what to do.

    ``path`` is the database file (every error raised by this module sets it; None only for errors
    made elsewhere, such as test doubles); ``code`` is SQLite's error name (``"SQLITE_FULL"``,
    ``"SQLITE_NOTADB"``, ...) when the failure came from SQLite, else None.
    """

    def __init__(self, message: str, *, path: Path | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.code = code


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


# -- SQL -------------------------------------------------------------------------------------------

_MEMBER_COLUMNS = "id, organization_id, first_name, last_name, status, is_staff"
_MEMBERSHIP_COLUMNS = "id, member_id, type, start_date, end_date, remaining_classes, plan_id"
_CHECKIN_COLUMNS = (
    "id, seq, door_id, decision, reason, member_id, membership_id, classes_used, "
    "replica_version, wall_time, boot_id, monotonic_ns, clock_quality, sync_state"
)

# Everything the scanner runs between reading a code and pulsing the relay. Each is an index
# lookup (tests check the query plans), so the door's latency does not grow with the gym.
DOOR_PATH_QUERIES: dict[str, str] = {
    "find_member_id": "SELECT id FROM members WHERE code_hash = ?",
    "member": f"SELECT {_MEMBER_COLUMNS} FROM members WHERE id = ?",  # noqa: S608
    # rowid order is the cloud's order, and it comes free with the member_id index.
    "memberships": (
        f"SELECT {_MEMBERSHIP_COLUMNS} FROM memberships"  # noqa: S608
        " WHERE member_id = ? ORDER BY rowid"
    ),
    "plan": "SELECT name FROM plans WHERE id = ?",
    "plan_windows": (
        "SELECT weekday, start_minute, end_minute FROM plan_windows"
        " WHERE plan_id = ? ORDER BY weekday, start_minute"
    ),
    # Classes used that the replica's balances do not include yet: rows still pending upload, and
    # uploaded rows whose side effect lives in a cloud version newer than the replica's (between
    # the upload and the next pull). The literal ``classes_used > 0`` is what lets SQLite use the
    # partial index; the replica version is read in the same statement, so in the same snapshot.
    "pending_uses": (
        "SELECT membership_id, SUM(classes_used) FROM checkins"
        " WHERE member_id = ? AND classes_used > 0 AND membership_id IS NOT NULL"
        " AND (sync_state = 'pending' OR cloud_version >"
        " (SELECT CAST(value AS INTEGER) FROM replica_meta WHERE key = 'version'))"
        " GROUP BY membership_id"
    ),
    "last_entry": (
        "SELECT wall_time, boot_id, monotonic_ns FROM checkins"
        " WHERE member_id = ? AND door_id = ? AND decision = 'granted'"
        " ORDER BY seq DESC LIMIT 1"
    ),
    "next_seq": (
        "UPDATE journal_counter SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq"
    ),
    "insert_checkin": (
        f"INSERT INTO checkins ({_CHECKIN_COLUMNS})"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
}

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

# -- replica rows as protocol rows -----------------------------------------------------------------

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
# An uploaded check-in whose side-effect version the cloud did not say (a ``duplicate`` answer):
# counted as used until the next successful pull, which certainly includes it.
UNKNOWN_CLOUD_VERSION = 2**63 - 1
_MASK64 = (1 << 64) - 1
# A row hash split in two halves whose sums cannot overflow (see Store._replica_sums).
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


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """Where the journal stands, for the heartbeat and the owner page (DESIGN §8).

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
    member is no longer in the replica."""

    seq: int
    at: datetime
    door_id: str
    verdict: str
    reason: str
    has_member: bool
    first_name: str | None
    last_name: str | None
    sync_state: str


class _ChecksumMismatch(Exception):
    """Raised inside a write transaction to roll it back; never leaves the store."""

    def __init__(self, count: int, checksum: str | None, applied: int) -> None:
        super().__init__("checksum mismatch")
        self.count = count
        self.checksum = checksum
        self.applied = applied


# -- time as text ----------------------------------------------------------------------------------


def _utc_text(moment: datetime, what: str) -> str:
    """``moment`` as fixed-width UTC text. Raises ValueError for a naive datetime: the store cannot
    know which zone it meant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware, got a naive datetime; the store keeps UTC"
        )
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _utc_from_text(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _date_or_none(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


# -- error messages --------------------------------------------------------------------------------


def _describe(
    err: sqlite3.Error,
    *,
    path: Path,
    readonly: bool,
    busy_timeout_ms: int,
    action: str,
    consequence: str,
) -> StoreError:
    """Turn a SQLite error into a StoreError that says what happened to ``path`` and what to do.
    ``action`` completes "could not ..."; ``consequence`` says what was (not) done."""
    code = getattr(err, "sqlite_errorcode", None)
    name = getattr(err, "sqlite_errorname", None)
    # Extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED, ...) carry the primary code in
    # their low byte.
    primary = code & 0xFF if isinstance(code, int) else None
    where = str(path)
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        message = (
            f"{where} is not a SQLite database or is damaged; it was left untouched so the journal "
            f"can be recovered; move it aside and restore a backup (or start with an empty store "
            f"at that path). Could not {action}: {consequence}."
        )
    elif primary == sqlite3.SQLITE_FULL:
        message = (
            f"disk full: {consequence}. {where} could not grow; free space on its file system "
            f"(old logs, old backups) and try again. Could not {action}."
        )
    elif primary == sqlite3.SQLITE_READONLY and readonly:
        message = (
            f"{where} is opened read-only here, so this process cannot {action}: {consequence}. "
            f"Writes belong to the scanner and the sync agent, which open it read-write."
        )
    elif primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        message = (
            f"cannot write {where}: the file system is read-only or the file's permissions forbid "
            f"writing, so could not {action}: {consequence}. Check that the data partition is "
            f"mounted read-write and that the database and its folder belong to the kiosk's user."
        )
    elif primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        message = (
            f"{where} stayed locked by another process for more than {busy_timeout_ms} ms, so "
            f"could not {action}: {consequence}. Another kiosk process (sync, web, backup) is "
            f"holding a long transaction; check the kiosk services' status and logs."
        )
    elif primary == sqlite3.SQLITE_CANTOPEN:
        message = (
            f"cannot open {where}: the file or its folder is missing, or the kiosk's user may not "
            f"access it ({consequence}). Check the store path in the configuration and its "
            f"permissions."
        )
    elif primary == sqlite3.SQLITE_IOERR:
        message = (
            f"I/O error on {where}, could not {action}: {consequence}. The storage (SD card) may "
            f"be failing: check the kernel log (dmesg), then restore a backup onto new storage."
        )
    elif primary == sqlite3.SQLITE_CONSTRAINT:
        message = (
            f"could not {action} in {where}: the data breaks a rule of the schema ({err}); "
            f"{consequence}."
        )
    else:
        message = f"could not {action} in {where}: {err}; {consequence}."
    return StoreError(message, path=path, code=name)


# -- the store -------------------------------------------------------------------------------------


class Store:
    """The kiosk's database. Create with ``Store.open``; close with ``close()`` or ``with``.

    Safe to share between threads of one process (calls are serialised by a lock); each process
    opens its own ``Store``. Every method raises ``StoreError`` on database failures, including a
    call after ``close()``.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, *, readonly: bool, busy_timeout_ms: int
    ) -> None:
        """Internal: use ``Store.open``, which configures and migrates the connection."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._readonly = readonly
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()

    # -- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        readonly: bool = False,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Store:
        """Open (and if needed create and migrate) the database at ``path``.

        Read-write: creates the parent folder and the file if missing, switches to WAL with
        ``synchronous=FULL`` and foreign keys, then applies pending migrations, one transaction
        each. Read-only (the owner page): opens an existing file with ``mode=ro``, never creates,
        never migrates. ``busy_timeout_ms`` is how long a write waits for another process's.

        Raises StoreError when the file is not a database or is damaged (left untouched), when its
        schema is newer than this code (or, read-only, older), when it cannot be created or
        opened, or when a migration fails (the database stays at its previous version).
        """
        path = Path(path)
        if readonly and not path.exists():
            raise StoreError(
                f"{path} does not exist; a read-only open never creates it. Start the scanner "
                f"(or the demo) once to create the database, or fix the store path.",
                path=path,
            )
        if not readonly:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(
                    f"cannot create the folder {path.parent} for the database {path}: "
                    f"{err.strerror}. Check that the data partition is mounted read-write and "
                    f"that the kiosk's user may write there.",
                    path=path,
                ) from err
        timeout_s = busy_timeout_ms / 1000
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
            else:
                conn = sqlite3.connect(
                    path, timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as err:
            raise _describe(
                err,
                path=path,
                readonly=readonly,
                busy_timeout_ms=busy_timeout_ms,
                action="open the database",
                consequence="nothing was changed",
            ) from err
        store = cls(conn, path, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
        try:
            store._prepare()
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        conn = self._live()
        with self._guard("open the database", "nothing was changed"):
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            # The first read of the file: a file that is not a database fails here, before
            # anything (WAL switch, migration) could write to it.
            version = schema_version(conn)
            if version > LATEST_VERSION:
                raise StoreError(
                    f"{self._path} has schema version {version}, newer than this code knows "
                    f"(version {LATEST_VERSION}): it was written by a newer kiosk release. Install "
                    f"that release again (or newer); the file was left untouched.",
                    path=self._path,
                )
            if self._readonly:
                if version < LATEST_VERSION:
                    raise StoreError(
                        f"{self._path} has schema version {version} but this code reads version "
                        f"{LATEST_VERSION}; a read-only open never migrates. Start the scanner "
                        f"once so it upgrades the database, then retry.",
                        path=self._path,
                    )
                return
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self._path} cannot use write-ahead logging (journal mode stayed {mode}); "
                    f"the kiosk's three processes need it. Keep the database on a local file "
                    f"system (not a network share).",
                    path=self._path,
                )
            # WAL with FULL syncs the log on every commit: a committed check-in survives power loss.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            apply_migrations(conn)

    def close(self) -> None:
        """Close the connection. Safe to call more than once."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    def schema_version(self) -> int:
        """The schema version of the open database (``migrations.LATEST_VERSION`` once open)."""
        with self._lock, self._guard("read the schema version", "nothing was changed"):
            return schema_version(self._live())

    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: ``["ok"]`` when the file is sound, else its findings.
        Reads the whole file (seconds on a large database): for self-tests, not the door path."""
        with self._read("check the database's integrity") as conn:
            return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]

    def quick_check(self) -> list[str]:
        """SQLite's quick check (``PRAGMA quick_check``): ``["ok"]`` when the file's structure is
        sound, else its findings. Works on a read-only store (the owner page's diagnostics);
        faster than ``integrity_check`` (no index-content cross-check) but still reads every
        page: seconds on a large database."""
        with self._read("check the database's structure") as conn:
            return [str(row[0]) for row in conn.execute("PRAGMA quick_check")]

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on this store's connection: it changes whenever another
        connection (another process) commits to the file, and stays the same otherwise. The owner
        page reads it to know, in microseconds, whether anything it shows can have changed."""
        with self._lock, self._guard("read the data version", "nothing was changed"):
            (version,) = self._live().execute("PRAGMA data_version").fetchone()
        return int(version)

    # -- plumbing --------------------------------------------------------------------------------

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store for {self._path} is closed", path=self._path)
        return self._conn

    @contextlib.contextmanager
    def _guard(self, action: str, consequence: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise _describe(
                err,
                path=self._path,
                readonly=self._readonly,
                busy_timeout_ms=self._busy_timeout_ms,
                action=action,
                consequence=consequence,
            ) from err

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot of the database."""
        with self._lock, self._guard(action, "nothing was changed"):
            conn = self._live()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                self._end_quietly(conn, "COMMIT")

    @contextlib.contextmanager
    def _write(self, action: str, consequence: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the write lock up front (BEGIN IMMEDIATE) so it never
        fails half-way for a lock; committed when the block ends, rolled back on any exception."""
        with self._lock, self._guard(action, consequence):
            conn = self._live()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._end_quietly(conn, "ROLLBACK")
                raise

    @staticmethod
    def _end_quietly(conn: sqlite3.Connection, statement: str) -> None:
        # SQLite may already have rolled back by itself (disk full, I/O error); the error that
        # got us here is the one worth reporting.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(statement)

    # -- replica ---------------------------------------------------------------------------------

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
            meta.append(("synced_at", _utc_text(snapshot.synced_at, "snapshot.synced_at")))
        with self._write(
            "replace the replica", "replica NOT replaced, the previous one is still in use"
        ) as conn:
            for statement in _CLEAR_REPLICA:
                conn.execute(statement)
            self._insert_rows(conn, "", snapshot_rows(snapshot), upsert=False)
            conn.executemany("INSERT INTO replica_meta (key, value) VALUES (?, ?)", meta)

    @staticmethod
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
                    Store._write_plan(conn, prefix, row, upsert=upsert)
                    written += 1
                continue
            tally = [0]
            conn.executemany(_insert_sql(kind, prefix, upsert=upsert), _hashed(group, tally))
            written += tally[0]
        return written

    @staticmethod
    def _write_plan(
        conn: sqlite3.Connection, prefix: str, row: ReplicaRow, *, upsert: bool
    ) -> None:
        assert row.data is not None
        conn.execute(_insert_sql("plan", prefix, upsert=upsert), _row_values(row, row.row_hash()))
        if upsert:
            conn.execute(f"DELETE FROM {prefix}plan_windows WHERE plan_id = ?", (row.id,))  # noqa: S608
        conn.executemany(
            f"INSERT INTO {prefix}plan_windows (plan_id, weekday, start_minute, end_minute)"  # noqa: S608
            " VALUES (?, ?, ?, ?)",
            ((row.id, w[0], w[1], w[2]) for w in row.data["windows"]),
        )

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
            return self._insert_rows(conn, _SHADOW, rows, upsert=False)

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
            ("synced_at", _utc_text(synced_at, "synced_at")),
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
                applied = self._apply_staged(conn, target)
                count, summed = self._replica_sums(conn, target)
                if count != checkpoint.count or summed != checkpoint.checksum:
                    raise _ChecksumMismatch(count, summed, applied)
                if into_shadow:
                    started = time.perf_counter()
                    self._swap_shadow_in(conn)
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

    @staticmethod
    def _apply_staged(conn: sqlite3.Connection, prefix: str) -> int:
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
                    "SELECT id, data FROM staged_changes WHERE deleted = 0 AND kind = ?"
                    " ORDER BY ord",
                    (kind,),
                )
            )
            applied += Store._insert_rows(conn, prefix, rows, upsert=True)
        return applied

    @staticmethod
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

    @staticmethod
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

    def replica_checksum(self) -> tuple[int, str | None]:
        """``(count, checksum)`` of the live replica as the protocol defines them (DESIGN §8):
        checksum None means unknown (rows loaded before schema v3 carry no hash), and the agent
        then takes a fresh snapshot."""
        with self._read("compute the replica's checksum") as conn:
            return self._replica_sums(conn, "")

    def shadow_checksum(self) -> tuple[int, str]:
        """``(count, checksum)`` of the shadow tables as they stand (a snapshot being built).
        Raises StoreError when the read fails."""
        with self._read("compute the shadow replica's checksum") as conn:
            count, summed = self._replica_sums(conn, _SHADOW)
        # Every shadow row is hashed on the way in.
        assert summed is not None
        return count, summed

    def mark_replica_current(self, *, synced_at: datetime) -> None:
        """Record that the cloud confirmed the replica is current (a 304 to the idle poll): its
        sync time moves, its version and rows stay. Raises StoreError when the write fails."""
        with self._write("record the replica's sync time", "the sync time is unchanged") as conn:
            conn.execute(
                "INSERT INTO replica_meta (key, value) VALUES ('synced_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_utc_text(synced_at, "synced_at"),),
            )

    def _meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        return {
            str(key): str(value)
            for key, value in conn.execute("SELECT key, value FROM replica_meta")
        }

    def replica_info(self) -> ReplicaInfo:
        """The replica's version (0 = never loaded) and the server time of its last pull (None =
        never)."""
        with self._read("read the replica's version") as conn:
            meta = self._meta(conn)
        synced_at = meta.get("synced_at")
        return ReplicaInfo(
            version=int(meta.get("version", "0")),
            synced_at=None if synced_at is None else _utc_from_text(synced_at),
        )

    def code_salt(self) -> bytes:
        """The key the replica's code hashes were made with; empty bytes when no replica yet."""
        with self._read("read the replica's code salt") as conn:
            meta = self._meta(conn)
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
                wall_time=_utc_from_text(entry[0]), boot_id=entry[1], monotonic_ns=int(entry[2])
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

    # -- journal ---------------------------------------------------------------------------------

    def append_checkin(
        self, decision: Decision, *, door_id: str, replica_version: int, now: Now
    ) -> Checkin:
        """Record ``decision`` durably and return the row, only after its COMMIT returned: the
        caller may act on the door once this returns (commit, then act).

        One transaction takes the next sequence number from the journal's counter and inserts the
        row under a fresh UUIDv7 id, so the sequence has no gaps and no reuse, even after pruning.
        Raises StoreError when the row could not be recorded (disk full, read-only, locked for
        longer than the busy timeout, damaged file): then nothing was written and the sequence did
        not advance. Raises ValueError for a naive ``now.wall``.
        """
        wall_time = _utc_text(now.wall, "now.wall")
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
            wall_time=_utc_from_text(wall_time),
            boot_id=now.boot_id,
            monotonic_ns=now.monotonic_ns,
            clock_quality=quality,
            sync_state=SyncState.PENDING,
        )

    @staticmethod
    def _checkin(row: sqlite3.Row | tuple) -> Checkin:
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
            wall_time=_utc_from_text(row[9]),
            boot_id=row[10],
            monotonic_ns=int(row[11]),
            clock_quality=ClockQuality(row[12]),
            sync_state=SyncState(row[13]),
        )

    def recent_checkins(self, limit: int = 50) -> list[Checkin]:
        """The newest ``limit`` check-ins, newest (highest seq) first."""
        with self._read("read recent check-ins") as conn:
            rows = conn.execute(
                f"SELECT {_CHECKIN_COLUMNS} FROM checkins ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (max(0, int(limit)),),
            ).fetchall()
        return [self._checkin(row) for row in rows]

    def recent_decisions(self, limit: int = 20) -> list[DecisionRow]:
        """The newest ``limit`` decisions, newest (highest seq) first, each with its member's name
        from the replica (``DecisionRow``). A walk down the seq index plus one primary-key lookup
        per row: the cost does not grow with the journal or the replica."""
        with self._read("read recent decisions") as conn:
            rows = conn.execute(
                "SELECT c.seq, c.wall_time, c.door_id, c.decision, c.reason,"
                " c.member_id IS NOT NULL, m.first_name, m.last_name, c.sync_state"
                " FROM checkins AS c LEFT JOIN members AS m ON m.id = c.member_id"
                " ORDER BY c.seq DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
        return [
            DecisionRow(
                seq=int(r[0]),
                at=_utc_from_text(r[1]),
                door_id=str(r[2]),
                verdict=str(r[3]),
                reason=str(r[4]),
                has_member=bool(r[5]),
                first_name=r[6],
                last_name=r[7],
                sync_state=str(r[8]),
            )
            for r in rows
        ]

    def decision_counts(self, since: datetime) -> dict[tuple[str, str], int]:
        """How many decisions were recorded at or after ``since`` (the door's wall time), by
        ``(verdict, reason)``. A range of the wall-time index: cheap for a day, slower for a
        year. Raises ValueError for a naive ``since``."""
        since_text = _utc_text(since, "since")
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
                f"SELECT {_CHECKIN_COLUMNS} FROM checkins"  # noqa: S608
                " WHERE sync_state = 'pending' AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (int(after_seq), max(0, int(limit))),
            ).fetchall()
        return [self._checkin(row) for row in rows]

    def get_checkin(self, checkin_id: str) -> Checkin | None:
        """The check-in with this id, or None."""
        with self._read("read a check-in") as conn:
            row = conn.execute(
                f"SELECT {_CHECKIN_COLUMNS} FROM checkins WHERE id = ?",  # noqa: S608
                (checkin_id,),
            ).fetchone()
        return None if row is None else self._checkin(row)

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
        at_text = _utc_text(at, "at")
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
        at_text = _utc_text(at, "at")
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
            synced_at = self._meta(conn).get("synced_at")
        candidates = [_utc_from_text(text) for text in (newest, synced_at) if text is not None]
        return max(candidates, default=None)

    def prune_synced(self, older_than: datetime) -> int:
        """Delete synced check-ins whose wall time AND sync time are both before ``older_than``;
        returns how many were deleted. Pending and rejected rows are never deleted. Requiring the
        sync time too keeps a row recorded with a wrong (early) clock for the full retention
        period after it reached the cloud."""
        cutoff = _utc_text(older_than, "older_than")
        with self._write("prune synced check-ins", "nothing was deleted") as conn:
            cursor = conn.execute(
                "DELETE FROM checkins WHERE sync_state = 'synced'"
                " AND wall_time < ? AND synced_at < ?",
                (cutoff, cutoff),
            )
            return max(0, cursor.rowcount)

    # -- sync bookkeeping ------------------------------------------------------------------------

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
            oldest_pending_at=None if first_pending is None else _utc_from_text(first_pending[1]),
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

    # -- clock anchors ---------------------------------------------------------------------------

    def record_anchor(self, anchor: Anchor, *, recorded_at: datetime) -> None:
        """Keep ``anchor`` (boot's monotonic time <-> server time) if it is the newest for its
        boot, then keep only the ``MAX_ANCHORS`` boots with the newest server times.
        ``recorded_at`` is the device's wall time (for diagnostics only). Raises StoreError when
        the write fails, ValueError for a naive time."""
        values = (
            anchor.boot_id,
            int(anchor.monotonic_ns),
            _utc_text(anchor.server_time, "anchor.server_time"),
            _utc_text(recorded_at, "recorded_at"),
        )
        with self._write("record a clock anchor", "the anchor was not kept") as conn:
            conn.execute(
                "INSERT INTO clock_anchors (boot_id, monotonic_ns, server_time, recorded_at)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (boot_id) DO UPDATE SET monotonic_ns = excluded.monotonic_ns,"
                " server_time = excluded.server_time, recorded_at = excluded.recorded_at"
                " WHERE excluded.monotonic_ns >= clock_anchors.monotonic_ns",
                values,
            )
            conn.execute(
                "DELETE FROM clock_anchors WHERE boot_id NOT IN"
                " (SELECT boot_id FROM clock_anchors ORDER BY server_time DESC LIMIT ?)",
                (MAX_ANCHORS,),
            )

    def latest_anchor(self, boot_id: str) -> Anchor | None:
        """The newest anchor of boot ``boot_id``, or None."""
        with self._read("read a clock anchor") as conn:
            row = conn.execute(
                "SELECT boot_id, monotonic_ns, server_time FROM clock_anchors WHERE boot_id = ?",
                (boot_id,),
            ).fetchone()
        return None if row is None else Anchor(row[0], int(row[1]), _utc_from_text(row[2]))

    def anchors(self, limit: int = MAX_ANCHORS) -> list[Anchor]:
        """Up to ``limit`` anchors, one per boot, newest server time first."""
        with self._read("read the clock anchors") as conn:
            rows = conn.execute(
                "SELECT boot_id, monotonic_ns, server_time FROM clock_anchors"
                " ORDER BY server_time DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
        return [Anchor(r[0], int(r[1]), _utc_from_text(r[2])) for r in rows]

    # -- sync status -----------------------------------------------------------------------------

    def sync_status(self) -> dict[str, Any]:
        """The sync agent's last recorded status: key -> JSON value (``state``, ``online``,
        ``last_error``...; see ``kiosk.sync.agent``). Empty when the agent never ran."""
        with self._read("read the sync status") as conn:
            rows = conn.execute("SELECT key, value FROM sync_status ORDER BY key").fetchall()
        return {str(key): json.loads(value) for key, value in rows}

    def set_sync_status(self, values: Mapping[str, Any]) -> None:
        """Merge ``values`` (JSON-serialisable) into the sync status, in one transaction. Raises
        StoreError when the write fails, TypeError for a value JSON cannot hold."""
        encoded = [(str(key), json.dumps(value)) for key, value in values.items()]
        with self._write("record the sync status", "the status is unchanged") as conn:
            conn.executemany(
                "INSERT INTO sync_status (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                encoded,
            )

    def raise_seq_floor(self, floor: int) -> int:
        """Make the journal's next seq at least ``floor + 1`` (``kiosk db restore``: a restored
        backup must not hand out again the seq numbers the replaced database already gave to
        check-ins the cloud may hold). Never lowers the counter. Returns the last seq afterwards.
        Raises StoreError when the write fails (then nothing changed)."""
        with self._write("raise the journal's seq counter", "the counter is unchanged") as conn:
            conn.execute(
                "UPDATE journal_counter SET last_seq = ? WHERE id = 1 AND last_seq < ?",
                (int(floor), int(floor)),
            )
            (last,) = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
        return int(last)


# -- whole files: inspection, online backup, exclusive access (``kiosk db``) -------------------------

# Tables every FitFlow database has had since schema version 1: a file without them is foreign.
FITFLOW_TABLES = (
    "checkins",
    "closures",
    "journal_counter",
    "members",
    "memberships",
    "opening_hours",
    "plan_windows",
    "plans",
    "replica_meta",
)
# Errors of a backup step that are the target file's fault (its disk or its folder), by primary code.
_TARGET_ERRORS = frozenset(
    (
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
    )
)


@dataclass(frozen=True)
class DatabaseReport:
    """What ``inspect_database`` found in a file, without changing it.

    ``integrity`` is SQLite's full integrity check (``("ok",)`` when sound); ``schema_version`` the
    file's ``PRAGMA user_version`` (0: empty or not a FitFlow file); ``missing_tables`` the FitFlow
    tables it lacks (non-empty: a foreign SQLite file). The counts are None unless the file is a
    FitFlow database this code can read (no missing table, version <= ``LATEST_VERSION``):
    ``checkins`` per sync state (every state present), ``last_seq`` the newest seq handed out,
    ``members`` the replica's members and ``replica_version`` its version (0: never loaded).
    """

    path: Path
    integrity: tuple[str, ...]
    schema_version: int
    missing_tables: tuple[str, ...]
    checkins: dict[str, int] | None = None
    last_seq: int | None = None
    members: int | None = None
    replica_version: int | None = None

    @property
    def sound(self) -> bool:
        return self.integrity == ("ok",)


def _readonly_connection(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)


def quick_check_file(path: Path, *, busy_timeout_ms: int = 1000) -> list[str]:
    """SQLite's quick check (``PRAGMA quick_check``) of the database at ``path`` on a connection of
    its own, opened read-only and closed at the end: ``["ok"]`` when the file's structure is
    sound, else its findings. Reads every page (seconds on a large database) without holding any
    ``Store``'s lock, so the owner page's other reads go on meanwhile. Raises StoreError when the
    file is missing or cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file", path=path)
    try:
        conn = _readonly_connection(path, busy_timeout_ms)
        try:
            return [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise _describe(
            err,
            path=path,
            readonly=True,
            busy_timeout_ms=busy_timeout_ms,
            action="check the database's structure",
            consequence="nothing was changed",
        ) from err


def inspect_database(
    path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> DatabaseReport:
    """Check the database file at ``path`` read-only (never creates, migrates or writes it): full
    integrity check, schema version, FitFlow tables and, when readable, the journal and replica
    counts. Reads the whole file (seconds on a large database).

    Raises StoreError when ``path`` is missing, is not a SQLite database (code
    ``SQLITE_NOTADB``), is too damaged to be read at all (``SQLITE_CORRUPT``), or cannot be opened.
    Damage SQLite can still describe is returned in ``integrity`` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file", path=path)
    try:
        conn = _readonly_connection(path, busy_timeout_ms)
        try:
            conn.execute("BEGIN")  # one snapshot for every figure below
            version = schema_version(conn)
            integrity = tuple(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
            present = {
                str(name)
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            missing = tuple(t for t in FITFLOW_TABLES if t not in present)
            report = DatabaseReport(path, integrity, version, missing)
            if missing or version < 1 or version > LATEST_VERSION:
                return report
            counts = {state.value: 0 for state in SyncState}
            for state, count in conn.execute(
                "SELECT sync_state, COUNT(*) FROM checkins GROUP BY sync_state"
            ):
                counts[str(state)] = int(count)
            row = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
            (members,) = conn.execute("SELECT COUNT(*) FROM members").fetchone()
            meta = conn.execute("SELECT value FROM replica_meta WHERE key = 'version'").fetchone()
            return replace(
                report,
                checkins=counts,
                last_seq=0 if row is None else int(row[0]),
                members=int(members),
                replica_version=0 if meta is None else int(meta[0]),
            )
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise _describe(
            err,
            path=path,
            readonly=True,
            busy_timeout_ms=busy_timeout_ms,
            action="inspect the database",
            consequence="nothing was changed",
        ) from err


def backup_database(
    source: Path,
    target: Path,
    *,
    max_bytes: int | None = None,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> None:
    """Copy the database at ``source`` into the file ``target`` with SQLite's online backup, safe
    while the scanner and the sync agent write (WAL: it copies one consistent snapshot and blocks
    nobody; writers go on appending to the log meanwhile).

    ``source`` is opened read-only, never migrated, so a backup taken before an upgrade works on
    an older schema. ``target`` must be a new, empty file (the caller creates it with the mode it
    wants); it ends up as a self-contained rollback-journal database (no -wal beside it).
    ``max_bytes`` caps ``target``'s size: SQLite then fails with ``SQLITE_FULL`` rather than take
    space the door's journal needs. Not durable by itself: the caller fsyncs and verifies.

    Raises StoreError: on ``source`` when it is missing, damaged or locked too long; on ``target``
    (code ``SQLITE_FULL``: the cap or the disk was reached) when it cannot be written. A partly
    written ``target`` is left for the caller to remove.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise StoreError(f"{source} does not exist or is not a file", path=source)

    def describe(err: sqlite3.Error, path: Path) -> StoreError:
        return _describe(
            err,
            path=path,
            readonly=path == source,
            busy_timeout_ms=busy_timeout_ms,
            action=f"back up {source} into {target}",
            consequence="no backup was made",
        )

    try:
        src = _readonly_connection(source, busy_timeout_ms)
    except sqlite3.Error as err:
        raise describe(err, source) from err
    try:
        try:
            # The first read: a file that is not a database fails here, blamed on the source.
            (page_size,) = src.execute("PRAGMA page_size").fetchone()
            schema_version(src)
        except sqlite3.Error as err:
            raise describe(err, source) from err
        try:
            dst = sqlite3.connect(target, timeout=busy_timeout_ms / 1000, isolation_level=None)
        except sqlite3.Error as err:
            raise describe(err, target) from err
        try:
            if max_bytes is not None:
                # PRAGMA takes no placeholders; the value is an int computed here.
                dst.execute(f"PRAGMA max_page_count = {max(1, int(max_bytes) // int(page_size))}")
            # One step (pages=-1): a single read transaction, so the copy is one consistent
            # snapshot even while other processes commit.
            src.backup(dst)
            # A WAL source yields a WAL-mode copy; fold it into one file that stands alone.
            dst.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.Error as err:
            code = getattr(err, "sqlite_errorcode", None)
            on_target = isinstance(code, int) and code & 0xFF in _TARGET_ERRORS
            raise describe(err, target if on_target else source) from err
        finally:
            dst.close()
    finally:
        src.close()


@contextlib.contextmanager
def exclusive_access(path: Path) -> Iterator[None]:
    """Hold the database at ``path`` so that it can be replaced (``kiosk db restore``).

    Proves that no other connection (scanner, sync agent, owner page, a backup) has the file open:
    switching it out of WAL needs every other connection closed, because each one keeps a shared
    lock for as long as it is open. The switch also folds the log into the main file and removes
    the -wal and -shm files, so the file is complete on its own and no stale log is left beside it
    to be replayed onto a replacement. Then holds the write lock until the block ends, so nothing
    can write the file meanwhile. The next ``Store.open`` switches back to WAL.

    Raises StoreError with code ``SQLITE_BUSY`` when another connection has the file open, and the
    SQLite error (``SQLITE_NOTADB``, ``SQLITE_CORRUPT``...) when the file is damaged.
    """
    path = Path(path)
    try:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    except sqlite3.Error as err:
        raise _describe(
            err,
            path=path,
            readonly=False,
            busy_timeout_ms=0,
            action="open the database to replace it",
            consequence="nothing was changed",
        ) from err
    try:
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            code = getattr(err, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            ):
                raise StoreError(
                    f"{path} is open in another process (the scanner, the sync agent, the owner "
                    f"page or a backup); stop the kiosk services first (sudo systemctl stop "
                    f"fitflow-scanner fitflow-sync fitflow-web) and retry. Nothing was changed.",
                    path=path,
                    code="SQLITE_BUSY",
                ) from err
            raise _describe(
                err,
                path=path,
                readonly=False,
                busy_timeout_ms=0,
                action="lock the database to replace it",
                consequence="nothing was changed",
            ) from err
        yield
    finally:
        Store._end_quietly(conn, "ROLLBACK")
        conn.close()


def checkin_ids(
    path: Path,
    *,
    sync_state: SyncState | None = None,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> set[str]:
    """The ids of the check-ins in the database file at ``path`` (only those in ``sync_state``
    when given), read-only (never creates, migrates or writes it). Works on every schema version,
    older ones included: the ``checkins`` table has had ``id`` and ``sync_state`` since version 1.

    Raises StoreError when ``path`` is missing, not a database, damaged, or has no ``checkins``
    table (a foreign file).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file", path=path)
    try:
        conn = _readonly_connection(path, busy_timeout_ms)
        try:
            if sync_state is None:
                rows = conn.execute("SELECT id FROM checkins")
            else:
                rows = conn.execute(
                    "SELECT id FROM checkins WHERE sync_state = ?", (sync_state.value,)
                )
            return {str(checkin_id) for (checkin_id,) in rows}
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise _describe(
            err,
            path=path,
            readonly=True,
            busy_timeout_ms=busy_timeout_ms,
            action="read the check-in ids",
            consequence="nothing was changed",
        ) from err
