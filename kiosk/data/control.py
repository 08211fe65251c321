"""The control database (``control.sqlite``): the owner page's requests, its audit log, and the live
health the scanner publishes. The only module with SQL for this file.

Why a second file: the owner page (``kiosk web``, its own process) opens the door's database
read-only, yet its guarded actions (sync now, test the door) and its audit log need somewhere to
write, and the scanner needs somewhere to publish frame rate and decode time without ever waiting
on the journal's write lock (the sync agent holds it up to ~1 s during a snapshot swap). So a small
SQLite file sits next to the door's database. Nothing in it is a check-in: it is opened with
``synchronous=NORMAL`` (losing the last second of it on power loss is acceptable), and a damaged
one can be moved aside and recreated empty without losing anything that matters.

An owner request goes PENDING (the page submits it) → RUNNING (the scanner or the sync agent claims
it) → DONE or FAILED (the claimer finishes it). A request nobody claims within
``REQUEST_MAX_AGE_S`` becomes EXPIRED and is never acted on: a door must not open a minute after
the click. Request times are the device's kernel wall clock in every process (see
``shared_wall``), so the page and the claimers agree on a request's age.

Every failure that leaves this module is a ``ControlError`` in plain words: which file, what
failed, what to do. Times are stored as fixed-width UTC text (``sync.protocol.utc_text``), so text
order is time order, and come back as aware UTC datetimes. Caller strings go through placeholders
and are flattened to one printable line and capped, so a hostile or huge value cannot bloat the page.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from kiosk.core.clock import AnchoredClock, Clock
from kiosk.data.wal import use_wal
from sync.protocol import utc_from_text, utc_text
from sync.text import one_line

log = logging.getLogger(__name__)

CONTROL_FILENAME = "control.sqlite"
# A request not claimed within this is EXPIRED, never acted on late (a door must not open a minute
# after the click). Also the tolerance for a request dated ahead of the claimer's clock.
REQUEST_MAX_AGE_S = 60.0
# A request RUNNING longer than this was taken by a process that died before finishing it (a
# test-door pulse takes milliseconds, a sync cycle at most a few minutes); the next claim of its
# kind marks it FAILED so the page does not show it running for ever.
RUNNING_MAX_AGE_S = 900.0
SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT_MS = 250

# Caps for caller strings, in characters.
DETAIL_CHARS = 200
_NAME_CHARS = 40
_CLIENT_CHARS = 100
_HEALTH_BYTES = 64 * 1024


def control_path(store_path: str | Path) -> Path:
    """Where the control file of the door database at ``store_path`` lives: next to it."""
    return Path(store_path).parent / CONTROL_FILENAME


def shared_wall(clock: Clock) -> datetime:
    """The wall time every kiosk process on this device agrees on: the kernel's clock.

    An ``AnchoredClock`` tells the cloud's time while the kernel clock is not NTP-synced; the owner
    page has no anchor and dates its requests by the kernel clock, so claimers and health reports
    use the anchored clock's base, or a request's age would be off by the clock's error (hours on a
    Pi that booted without network) and a door test could fire long after the click, or never.
    """
    return clock.base.wall() if isinstance(clock, AnchoredClock) else clock.wall()


class ControlError(Exception):
    """A failure of the control file in plain words: which file, what failed, what to do.
    ``path`` is the control file; ``busy`` is True when another process only held it locked for
    longer than the busy timeout (try again later; the file itself is fine)."""

    def __init__(self, message: str, *, path: Path | None = None, busy: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.busy = busy


class RequestKind(StrEnum):
    SYNC_NOW = "sync_now"
    TEST_DOOR = "test_door"


class RequestState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class OwnerRequest:
    """One owner action waiting for, or handled by, the scanner or the sync agent. Times are
    timezone-aware UTC; ``result`` is one line of at most 200 characters."""

    id: int
    kind: RequestKind
    state: RequestState
    requested_at: datetime
    finished_at: datetime | None
    result: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    action: str
    outcome: str
    detail: str
    client: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A process's latest published figures; ``updated_at`` is when they were published."""

    process: str
    pid: int
    updated_at: datetime
    data: dict[str, Any]


# -- schema ----------------------------------------------------------------------------------------

# Numbered migrations; ``PRAGMA user_version`` holds the last one applied. History: never edit a
# released one, add the next.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: requests, audit log, health
        """
        CREATE TABLE requests (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            kind         TEXT NOT NULL,
            state        TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            claimed_at   TEXT,
            finished_at  TEXT,
            result       TEXT
        )
        """,
        # The pollers' question ("anything pending of my kind?") is one index probe.
        "CREATE INDEX requests_by_kind_state ON requests (kind, state, id)",
        """
        CREATE TABLE audit (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            at      TEXT NOT NULL,
            action  TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail  TEXT NOT NULL,
            client  TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE health (
            process    TEXT PRIMARY KEY,
            pid        INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            data       TEXT NOT NULL
        )
        """,
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_REQUEST_COLUMNS = "id, kind, state, requested_at, finished_at, result"
_AUDIT_COLUMNS = "id, at, action, outcome, detail, client"
_EXPIRED_DETAIL = (
    f"not picked up within {REQUEST_MAX_AGE_S:.0f} s: is the scanner/sync service running?"
)
_ABANDONED_DETAIL = "abandoned: the process that took it stopped before finishing"


def _explain(err: sqlite3.Error, path: Path, action: str, busy_timeout_ms: int) -> ControlError:
    """A SQLite error as a ControlError saying what happened to ``path`` and what to do."""
    code = getattr(err, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        message = (
            f"{path} is not a SQLite database or is damaged, so could not {action}. It holds only "
            f"the owner page's requests, audit log and live health (no check-ins): stop the kiosk "
            f"services, move the file aside and start them again; a new one is created."
        )
    elif primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        message = (
            f"{path} stayed locked by another kiosk process for more than {busy_timeout_ms} ms, "
            f"so could not {action}; it is tried again later."
        )
    elif primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        message = (
            f"cannot write {path}, so could not {action}: the file system is read-only or the "
            f"kiosk's user may not write the file or its folder. Check that the data folder and "
            f"the files in it belong to the kiosk's user."
        )
    elif primary == sqlite3.SQLITE_FULL:
        message = f"disk full: could not {action} in {path}; free space on its file system."
    elif primary == sqlite3.SQLITE_IOERR:
        message = (
            f"I/O error on {path}, could not {action}; the storage (SD card) may be failing: "
            f"check the kernel log (dmesg)."
        )
    else:
        message = f"could not {action} in {path}: {err}"
    return ControlError(
        message, path=path, busy=primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    )


def _moment(text: str | None) -> datetime | None:
    return None if text is None else utc_from_text(text)


def _kind(kind: RequestKind | str) -> RequestKind:
    try:
        return RequestKind(kind)
    except ValueError:
        expected = ", ".join(k.value for k in RequestKind)
        raise ControlError(
            f"unknown owner request kind {one_line(kind, _NAME_CHARS)!r}; expected one of "
            f"{expected}"
        ) from None


def _limit(limit: int) -> int:
    return max(0, min(int(limit), 10_000))


# -- the store -------------------------------------------------------------------------------------


class ControlStore:
    """The control file. Create with ``ControlStore.open``; close with ``close()`` or ``with``.

    Thread-safe: one connection, calls serialised by a lock. Each process opens its own. Every
    method raises ``ControlError`` on database failures, including a call after ``close()``;
    a naive ``now`` raises ``ValueError`` (a programming error).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout_ms: int) -> None:
        """Internal: use ``ControlStore.open``."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> ControlStore:
        """Open, creating the file (not the folder) when missing; WAL, synchronous=NORMAL (these
        rows are not check-ins: losing the last second of them on power loss is acceptable); its
        own schema versioned with ``PRAGMA user_version`` and migrated on open. ``busy_timeout_ms``
        is how long a write waits for another process's (short: the door polls this file).

        Raises ControlError when the folder is missing, the file is not a database or is damaged
        (left untouched), its schema is newer than this code, or it cannot be written.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise ControlError(
                f"cannot open the control file {path}: the folder {path.parent} does not exist. "
                f"The file lives next to the door's database: check store.path in the "
                f"configuration (the scanner creates that folder on its first start).",
                path=path,
            )
        try:
            conn = sqlite3.connect(
                path,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as err:
            raise _explain(err, path, "open the control file", busy_timeout_ms) from err
        store = cls(conn, path, busy_timeout_ms)
        try:
            store._prepare()
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        with self._guard("open the control file") as conn:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            # The first read: a file that is not a database fails here, before anything writes.
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise ControlError(
                    f"{self._path} has schema version {version}, newer than this code knows "
                    f"(version {SCHEMA_VERSION}): it was written by a newer kiosk release. Install "
                    f"that release again, or move the file aside (it holds no check-ins).",
                    path=self._path,
                )
            mode = use_wal(conn, self._busy_timeout_ms)
            if mode != "wal":
                raise ControlError(
                    f"{self._path} cannot use write-ahead logging (journal mode stayed {mode}); "
                    f"keep the kiosk's data on a local file system.",
                    path=self._path,
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Re-read under the write lock: the page and the scanner may start together,
                    # and only one of them must create the tables.
                    if self._version(conn) < target:
                        for statement in _MIGRATIONS[target - 1]:
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {int(target)}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        return int(version)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Close the connection. Safe to call more than once."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    def __enter__(self) -> ControlStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; SQLite errors become ControlErrors."""
        with self._lock:
            if self._conn is None:
                raise ControlError(f"the control file {self._path} is closed", path=self._path)
            try:
                yield self._conn
            except sqlite3.Error as err:
                raise _explain(err, self._path, action, self._busy_timeout_ms) from err

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, with the write lock taken up front (BEGIN IMMEDIATE): two
        claimers in two processes are serialised here, so exactly one wins a request."""
        with self._guard(action) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _request(self, row: tuple) -> OwnerRequest:
        rid, kind, state, requested_at, finished_at, result = row
        try:
            return OwnerRequest(
                id=int(rid),
                kind=RequestKind(kind),
                state=RequestState(state),
                requested_at=_moment(requested_at),  # type: ignore[arg-type]
                finished_at=_moment(finished_at),
                result=result,
            )
        except (ValueError, TypeError) as err:
            raise ControlError(
                f"{self._path} holds a request row this code cannot read (#{rid}: {err}); move "
                f"the file aside (it holds no check-ins) and restart the kiosk services.",
                path=self._path,
            ) from err

    @staticmethod
    def _insert_audit(
        conn: sqlite3.Connection,
        *,
        at: datetime,
        action: str,
        outcome: str,
        detail: str = "",
        client: str = "",
    ) -> None:
        conn.execute(
            "INSERT INTO audit (at, action, outcome, detail, client) VALUES (?, ?, ?, ?, ?)",
            (
                utc_text(at),
                one_line(action, _NAME_CHARS),
                one_line(outcome, _NAME_CHARS),
                one_line(detail, DETAIL_CHARS),
                one_line(client, _CLIENT_CHARS),
            ),
        )

    def _retire(
        self, conn: sqlite3.Connection, kind: RequestKind, now: datetime, max_age_s: float
    ) -> None:
        """PENDING requests outside ``max_age_s`` of ``now`` (either side: a clock set back must
        not keep a request fresh for longer) → EXPIRED; RUNNING ones older than
        ``RUNNING_MAX_AGE_S`` → FAILED (abandoned). One audit row each."""
        oldest = utc_text(now - timedelta(seconds=max_age_s))
        newest = utc_text(now + timedelta(seconds=max_age_s))
        stale = conn.execute(
            "SELECT id FROM requests WHERE kind = ? AND state = 'pending'"
            " AND (requested_at < ? OR requested_at > ?) ORDER BY id",
            (kind.value, oldest, newest),
        ).fetchall()
        self._close(conn, kind, stale, now, RequestState.EXPIRED, "expired", _EXPIRED_DETAIL)
        abandoned_before = utc_text(now - timedelta(seconds=RUNNING_MAX_AGE_S))
        dead = conn.execute(
            "SELECT id FROM requests WHERE kind = ? AND state = 'running' AND claimed_at < ?"
            " ORDER BY id",
            (kind.value, abandoned_before),
        ).fetchall()
        self._close(conn, kind, dead, now, RequestState.FAILED, "failed", _ABANDONED_DETAIL)

    def _close(
        self,
        conn: sqlite3.Connection,
        kind: RequestKind,
        rows: list,
        now: datetime,
        state: RequestState,
        outcome: str,
        detail: str,
    ) -> None:
        """End the requests ``rows`` (``(id,)`` tuples) in ``state`` with ``detail`` as their
        result, with one audit row each."""
        for (rid,) in rows:
            conn.execute(
                "UPDATE requests SET state = ?, finished_at = ?, result = ? WHERE id = ?",
                (state.value, utc_text(now), detail, rid),
            )
            self._insert_audit(conn, at=now, action=kind.value, outcome=outcome, detail=detail)

    # -- owner requests --------------------------------------------------------------------------

    def submit(self, kind: RequestKind | str, *, now: datetime, client: str = "") -> OwnerRequest:
        """Ask for ``kind``. A fresh PENDING request of this kind already there is returned as it
        is (a double click gives one pulse); else a new PENDING request is recorded. Either way
        an audit row (action=kind, outcome="requested", client) is written in the same
        transaction. Stale requests of this kind are expired first."""
        kind = _kind(kind)
        with self._write(f"record a {kind.value} request") as conn:
            self._retire(conn, kind, now, REQUEST_MAX_AGE_S)
            row = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests"  # noqa: S608 (constant columns)
                " WHERE kind = ? AND state = 'pending' ORDER BY id LIMIT 1",
                (kind.value,),
            ).fetchone()
            if row is not None:
                detail = f"request #{row[0]} was already waiting"
            else:
                cur = conn.execute(
                    "INSERT INTO requests (kind, state, requested_at) VALUES (?, 'pending', ?)",
                    (kind.value, utc_text(now)),
                )
                row = (cur.lastrowid, kind.value, "pending", utc_text(now), None, None)
                detail = f"request #{row[0]}"
            self._insert_audit(
                conn, at=now, action=kind.value, outcome="requested", detail=detail, client=client
            )
        return self._request(row)

    def has_pending(self, kind: RequestKind | str) -> bool:
        """True when a request of ``kind`` waits (possibly stale: ``claim`` decides). Read only,
        one index probe: pollers call it every half second."""
        kind = _kind(kind)
        with self._guard(f"look for a pending {kind.value} request") as conn:
            row = conn.execute(
                "SELECT 1 FROM requests WHERE kind = ? AND state = 'pending' LIMIT 1",
                (kind.value,),
            ).fetchone()
        return row is not None

    def claim(
        self,
        kind: RequestKind | str,
        *,
        now: datetime,
        max_age_s: float = REQUEST_MAX_AGE_S,
    ) -> OwnerRequest | None:
        """Take the oldest fresh PENDING request of ``kind`` (→ RUNNING) and return it, or None.
        In one BEGIN IMMEDIATE transaction: requests not claimed within ``max_age_s`` become
        EXPIRED first (audit row "expired"), so they are never acted on late. Of two claimers in
        two processes, exactly one gets a given request."""
        kind = _kind(kind)
        with self._write(f"claim a {kind.value} request") as conn:
            self._retire(conn, kind, now, max_age_s)
            row = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests"  # noqa: S608 (constant columns)
                " WHERE kind = ? AND state = 'pending' ORDER BY id LIMIT 1",
                (kind.value,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE requests SET state = 'running', claimed_at = ? WHERE id = ?",
                (utc_text(now), row[0]),
            )
        return self._request((row[0], row[1], "running", row[3], None, None))

    def finish(self, request_id: int, *, ok: bool, result: str, now: datetime) -> None:
        """RUNNING → DONE (``ok``) or FAILED, with ``finished_at`` and ``result`` (flattened to one
        line of at most 200 characters), and an audit row (outcome "done"/"failed", detail =
        result). A request no longer RUNNING (expired or abandoned meanwhile) is left as it is.
        Raises ControlError for an id that does not exist."""
        text = one_line(result, DETAIL_CHARS)
        with self._write(f"finish request #{int(request_id)}") as conn:
            row = conn.execute(
                "SELECT kind, state FROM requests WHERE id = ?", (int(request_id),)
            ).fetchone()
            if row is None:
                raise ControlError(
                    f"there is no owner request #{int(request_id)} in {self._path}",
                    path=self._path,
                )
            kind, state = row
            if state != RequestState.RUNNING:
                log.warning(
                    "owner request #%d is %s, not running: left as it is", request_id, state
                )
                return
            outcome = RequestState.DONE if ok else RequestState.FAILED
            conn.execute(
                "UPDATE requests SET state = ?, finished_at = ?, result = ? WHERE id = ?",
                (outcome.value, utc_text(now), text, int(request_id)),
            )
            self._insert_audit(conn, at=now, action=kind, outcome=outcome.value, detail=text)

    def recent_requests(self, limit: int = 20) -> list[OwnerRequest]:
        """The newest ``limit`` requests, newest first."""
        with self._guard("read the recent requests") as conn:
            rows = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests ORDER BY id DESC LIMIT ?",  # noqa: S608
                (_limit(limit),),
            ).fetchall()
        return [self._request(row) for row in rows]

    # -- audit log -------------------------------------------------------------------------------

    def audit(
        self, action: str, outcome: str, *, now: datetime, detail: str = "", client: str = ""
    ) -> None:
        """Record an owner action (login ok/failed/throttled, logout, diagnostics, ...). Every
        string is flattened to one printable line and capped."""
        with self._write("write the audit log") as conn:
            self._insert_audit(
                conn, at=now, action=action, outcome=outcome, detail=detail, client=client
            )

    def recent_audit(self, limit: int = 50) -> list[AuditEntry]:
        """The newest ``limit`` audit rows, newest first (in the order they were written)."""
        with self._guard("read the audit log") as conn:
            rows = conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?",  # noqa: S608
                (_limit(limit),),
            ).fetchall()
        try:
            return [
                AuditEntry(int(rid), _moment(at), action, outcome, detail, client)  # type: ignore[arg-type]
                for rid, at, action, outcome, detail, client in rows
            ]
        except (ValueError, TypeError) as err:
            raise ControlError(
                f"{self._path} holds an audit row this code cannot read ({err}); move the file "
                f"aside (it holds no check-ins) and restart the kiosk services.",
                path=self._path,
            ) from err

    # -- process health --------------------------------------------------------------------------

    def publish_health(
        self,
        process: str,
        data: Mapping[str, Any],
        *,
        now: datetime,
        pid: int | None = None,
    ) -> None:
        """Replace ``process``'s health report with ``data`` (JSON-able, at most 64 KiB as JSON;
        no NaN or infinity). Raises ControlError when it cannot be stored."""
        name = one_line(process, _NAME_CHARS)
        try:
            text = json.dumps(dict(data), separators=(",", ":"), allow_nan=False, default=str)
        except (TypeError, ValueError) as err:
            raise ControlError(
                f"the {name} health report cannot be stored in {self._path}: {err}",
                path=self._path,
            ) from err
        if len(text) > _HEALTH_BYTES:
            raise ControlError(
                f"the {name} health report is {len(text)} characters, more than "
                f"{_HEALTH_BYTES}; not stored",
                path=self._path,
            )
        with self._write(f"publish the {name} health report") as conn:
            conn.execute(
                "INSERT INTO health (process, pid, updated_at, data) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (process) DO UPDATE SET pid = excluded.pid,"
                " updated_at = excluded.updated_at, data = excluded.data",
                (name, int(pid or 0), utc_text(now), text),
            )

    def health(self, process: str) -> HealthReport | None:
        """The latest report ``process`` published, or None if it never did."""
        name = one_line(process, _NAME_CHARS)
        with self._guard(f"read the {name} health report") as conn:
            row = conn.execute(
                "SELECT pid, updated_at, data FROM health WHERE process = ?", (name,)
            ).fetchone()
        if row is None:
            return None
        pid, updated_at, text = row
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return HealthReport(name, int(pid), _moment(updated_at), data)  # type: ignore[arg-type]
        except (ValueError, TypeError) as err:
            raise ControlError(
                f"the {name} health report in {self._path} cannot be read ({err}); it is "
                f"replaced at the next report",
                path=self._path,
            ) from err

    # -- housekeeping ----------------------------------------------------------------------------

    def prune(
        self, *, now: datetime, keep_audit: int = 10_000, keep_requests_days: int = 30
    ) -> int:
        """Keep the newest ``keep_audit`` audit rows and drop finished requests (done, failed,
        expired) asked for more than ``keep_requests_days`` before ``now``; pending and running
        requests are kept. Returns the number of rows deleted."""
        if keep_audit < 0 or keep_requests_days < 0:
            raise ValueError("prune: keep_audit and keep_requests_days must be >= 0")
        cutoff = utc_text(now - timedelta(days=keep_requests_days))
        with self._write("prune the audit log and old requests") as conn:
            audit = conn.execute(
                "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (int(keep_audit),),
            ).rowcount
            requests = conn.execute(
                "DELETE FROM requests WHERE state NOT IN ('pending', 'running')"
                " AND requested_at < ?",
                (cutoff,),
            ).rowcount
        return audit + requests
