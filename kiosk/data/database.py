"""The door's database file as a connection: opening, pragmas, guarded transactions, errors.

``kiosk.db`` is one SQLite file shared by three processes (the scanner, the sync agent, the owner
page), in WAL mode so readers never block the door. ``Database`` holds one connection to it and
the plumbing every part of ``kiosk.data.store.Store`` runs its SQL through: opening (creating the
folder and file, WAL, ``synchronous=FULL``, foreign keys, migrations; read-only without any of
that), a lock that serialises the threads of one process, and read and write transactions that
turn every SQLite failure into a ``StoreError``. The tables themselves are read and written by
``journal``, ``replica`` and ``sync_state``; whole-file work (inspection, backup, exclusive
access) is in ``dbfile``.

Failure modes: every failure that leaves this module (and the modules built on it) is a
``StoreError`` whose message names the database file, what was lost (if anything) and what to do
(``describe_error``): not a database or damaged, disk full, read-only, locked by another process
for longer than the busy timeout, cannot open, I/O error, a schema rule broken, a schema newer
than this code (or, read-only, older), and any call after ``close()``. Nothing here deletes or
recreates an existing file: a damaged database is left exactly as found, so its journal can still
be recovered.

Times are stored as fixed-width ISO-8601 UTC text with microseconds
(``2024-05-01T17:03:09.120000Z``), so string order is time order (``utc_text``); they come back as
timezone-aware UTC ``datetime`` values (``sync.protocol.utc_from_text``): the wire's format, one
writer and one reader for the device and the cloud. Dates are ISO ``YYYY-MM-DD`` text.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from kiosk.data.migrations import LATEST_VERSION, apply_migrations, schema_version
from sync.protocol import utc_text as protocol_utc_text

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


# -- time as text ----------------------------------------------------------------------------------


def utc_text(moment: datetime, what: str) -> str:
    """``moment`` as the wire's fixed-width UTC text (``sync.protocol.utc_text``), so the store's
    times and the protocol's are one format. Raises ValueError for a naive datetime, naming
    ``what`` in the message: the store cannot know which zone it meant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware, got a naive datetime; the store keeps UTC"
        )
    return protocol_utc_text(moment)


# -- error messages --------------------------------------------------------------------------------


def describe_error(
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


def end_quietly(conn: sqlite3.Connection, statement: str) -> None:
    """Run ``statement`` (COMMIT or ROLLBACK) if a transaction is still open, ignoring its error.
    SQLite may already have rolled back by itself (disk full, I/O error); the error that got the
    caller here is the one worth reporting."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(statement)


# -- the connection --------------------------------------------------------------------------------


class Database:
    """One connection to the door's database and the transactions everything else runs in.

    ``kiosk.data.store.Store`` is this plus its tables (``Journal``, ``Replica``, ``SyncRecords``);
    create it with ``Store.open``, close it with ``close()`` or ``with``. Safe to share between
    threads of one process (calls are serialised by a lock); each process opens its own. Every
    method raises ``StoreError`` on database failures, including a call after ``close()``.
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
    ) -> Self:
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
            raise describe_error(
                err,
                path=path,
                readonly=readonly,
                busy_timeout_ms=busy_timeout_ms,
                action="open the database",
                consequence="nothing was changed",
            ) from err
        opened = cls(conn, path, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
        try:
            opened._prepare()
        except BaseException:
            conn.close()
            raise
        return opened

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

    def __enter__(self) -> Self:
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
            raise describe_error(
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
                end_quietly(conn, "COMMIT")

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
                end_quietly(conn, "ROLLBACK")
                raise
