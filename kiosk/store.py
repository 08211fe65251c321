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
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType

from kiosk import ids
from kiosk.migrations import LATEST_VERSION, apply_migrations, schema_version
from kiosk.model import (
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
    # The literal 'pending' (not a placeholder) is what lets SQLite use the partial index.
    "pending_uses": (
        "SELECT membership_id, SUM(classes_used) FROM checkins"
        " WHERE member_id = ? AND sync_state = 'pending' AND membership_id IS NOT NULL"
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
        ``snapshot``, in one transaction. Rows are streamed (``executemany`` over generators), so
        memory does not grow with the member count.

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
            conn.executemany(
                "INSERT INTO plans (id, name) VALUES (?, ?)",
                ((plan.id, plan.name) for plan in snapshot.plans),
            )
            conn.executemany(
                "INSERT INTO plan_windows (plan_id, weekday, start_minute, end_minute)"
                " VALUES (?, ?, ?, ?)",
                (
                    (plan.id, window.weekday, window.start_minute, window.end_minute)
                    for plan in snapshot.plans
                    for window in plan.windows
                ),
            )
            conn.executemany(
                f"INSERT INTO members ({_MEMBER_COLUMNS}, code_hash)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        member.id,
                        member.organization_id,
                        member.first_name,
                        member.last_name,
                        str(member.status),
                        int(bool(member.is_staff)),
                        code_hash,
                    )
                    for member, code_hash in snapshot.members
                ),
            )
            conn.executemany(
                f"INSERT INTO memberships ({_MEMBERSHIP_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        ms.id,
                        ms.member_id,
                        str(ms.type),
                        ms.start_date.isoformat(),
                        None if ms.end_date is None else ms.end_date.isoformat(),
                        ms.remaining_classes,
                        ms.plan_id,
                    )
                    for ms in snapshot.memberships
                ),
            )
            conn.executemany(
                "INSERT INTO opening_hours (weekday, open_minute, close_minute) VALUES (?, ?, ?)",
                ((w.weekday, w.start_minute, w.end_minute) for w in snapshot.opening_hours),
            )
            conn.executemany(
                "INSERT INTO closures (start_date, end_date, reason) VALUES (?, ?, ?)",
                (
                    (c.start_date.isoformat(), c.end_date.isoformat(), c.reason)
                    for c in snapshot.closures
                ),
            )
            conn.executemany("INSERT INTO replica_meta (key, value) VALUES (?, ?)", meta)

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
        classes used by check-ins still pending upload (by membership id; memberships without
        any are absent) and the newest granted check-in of this member at ``door_id``.
        None when the replica has no such member."""
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

    def pending_checkins(self, limit: int = 100) -> list[Checkin]:
        """The upload queue: the oldest ``limit`` check-ins still pending, lowest seq first."""
        with self._read("read the upload queue") as conn:
            rows = conn.execute(
                f"SELECT {_CHECKIN_COLUMNS} FROM checkins"  # noqa: S608
                " WHERE sync_state = 'pending'"
                " ORDER BY seq LIMIT ?",
                (max(0, int(limit)),),
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

    def mark_synced(self, checkin_ids: Iterable[str], *, at: datetime) -> int:
        """Mark pending check-ins as acknowledged by the cloud at ``at``; returns how many changed.
        Ids that are unknown or no longer pending are skipped, so a repeated acknowledgement is
        harmless."""
        return self._settle(checkin_ids, SyncState.SYNCED, at)

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
