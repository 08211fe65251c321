"""The door's database as a connection: opening, pragmas, the replica file attached beside the
journal, guarded transactions, errors.

``kiosk.db`` is one SQLite file shared by three processes (the scanner, the sync agent, the owner
page), in WAL mode so readers never block the door. It holds the **journal** (check-ins, committed
with ``synchronous=FULL``) and the sync agent's records. The **replica** (the cloud's members,
memberships, plans, hours and closures) lives in a file of its own beside it, so that replacing
it never takes the journal's write lock (``kiosk.data.replica``):

- ``kiosk.db-replica-<id>``: a replica file (SQLite, WAL, ``synchronous=NORMAL``: a power cut may
  cost its last change, which the next pull brings again; it can always be pulled again whole).
- ``kiosk.db-replica``: the pointer, one line naming the replica file in use; replaced atomically
  (written beside, fsynced, renamed, folder fsynced), so it names the old file or the new one.
  None yet: every process reads an empty replica (version 0) and the sync agent takes a snapshot.
- ``kiosk.db-replica.lock``: the writers' lock (``flock``), held while a replica file is built and
  switched in, so that two writers never clean up each other's files. The kernel drops it when its
  process dies, so a killed writer never leaves it held.

Why a file of its own, switched by a pointer: a million-member snapshot written into the journal's
file (shadow tables swapped in one transaction) held the journal's write lock for seconds, past
the door's busy timeout, and every index of the new rows was updated row by row while it was held.
Built in a file nobody else writes, the rows go in without secondary indexes, the indexes are built
at the end from sorted rows, the result is verified, fsynced, and only then named by the pointer:
the door waits for none of it. Shadow tables swapped by renaming would also have kept the journal's
lock short, but every page of the build would still have been a write transaction on the door's
file (each one delaying a check-in), and their random-order index updates a multiple of the
replica's size in writes.

``Database`` holds one connection to ``kiosk.db`` with the replica file in use attached to it,
read-only, as the schema ``replica`` (the journal's SQL and the replica's share one connection and
one transaction: ``Journal.recent_decisions`` joins names from it). Before every read transaction,
and on ``follow_replica`` (the door calls it once per frame), a ``stat`` of the pointer tells
whether the replica was switched; if so the new file is attached instead (about a millisecond).
Reads started before the switch finish on the old file, which stays readable while attached even
after the writer deleted it. A read transaction that needs the replica and the journal to agree
(``member_facts``: uses of a class not yet in the replica's balances) reads the replica first:
the journal it then reads is at least as new, so a use is counted once, before or after the
replica includes it. The sync agent writes replica files through connections of its own
(``ReplicaBuild``, and ``kiosk.data.replica``'s writer), never through this one.

Opening also runs the migrations (``kiosk.data.migrations``); a database of schema 3 or older has
its replica carried over into a replica file first (unless a usable one is already beside it),
then migration 4 drops the old tables and the space is given back (VACUUM). A replica file of an
older format (before phone passes, or before plans' visit limits) is carried over the same way
into a file of this format and switched in. A carry-over that fails is logged and the replica is pulled again: the journal is
never at stake.

The plumbing every part of ``kiosk.data.store.Store`` runs its SQL through: opening (creating the
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
import errno
import fcntl
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from kiosk.core.ids import uuid7
from kiosk.data.files import write_atomically
from kiosk.data.migrations import (
    LATEST_VERSION,
    LEGACY_REPLICA_VERSION,
    REPLICA_CARRY_OVER_FORMATS,
    REPLICA_CODE_INDEX,
    REPLICA_FORMAT,
    REPLICA_INDEXES,
    REPLICA_KIND_TABLES,
    REPLICA_SCHEMA,
    apply_migrations,
    schema_version,
)
from kiosk.data.wal import use_wal
from sync.protocol import utc_text as protocol_utc_text

log = logging.getLogger(__name__)

# Three processes share the file; a writer waits this long for another's write to finish.
DEFAULT_BUSY_TIMEOUT_MS = 5000
# The schema name the replica file in use is attached as, on every Store's connection.
REPLICA = "replica"
# A process opening a database of schema 3 waits this long (s) for another one that is carrying
# its replica over (a million members take a few seconds on this machine, more on a Pi).
CARRY_OVER_WAIT_S = 120.0
# After migration 4, free pages beyond this are given back to the file system (VACUUM).
RECLAIM_BYTES = 8 * 1024 * 1024
# A replica file's page cache while it is built (KiB, SQLite's negative cache_size): a constant,
# so the sync agent's memory does not grow with the member count; CREATE INDEX sorts in it and
# spills to temporary files beyond it.
BUILD_CACHE_KIB = 4096
# A replica file being built is written without fsync; once this much more of it is in the page
# cache it is synced (fdatasync), so that no large burst of its data is ever waiting to reach the
# storage, which the door's own commit (an fsync of the journal) could otherwise be made to wait
# for on file systems that order data writes before their journal commits (ext4's default).
BUILD_SYNC_BYTES = 16 * 1024 * 1024
# Observers of the replica's build and switch (tests, the bench): called with a phase name.
PhaseHook = Callable[[str], None]
# The phases told to a PhaseHook, in the order they happen:
REPLICA_PHASES = (
    "build:started",  # a new replica file exists, with its tables; the writers' lock is held
    "build:rows",  # a snapshot page is committed in it (once per page)
    "build:indexed",  # its secondary indexes are built
    "build:checked",  # staged changes applied; references, codes, count and checksum verified
    "build:sealed",  # WAL, fsynced: complete on disk, not in use yet
    "switch:pointer-written",  # the new pointer is on disk under its temporary name
    "switch:done",  # the pointer names the new file: every reader switches to it
    "cleanup:done",  # the superseded files are deleted
    "changes:applied",  # changes applied in the replica in use, not committed yet
    "changes:committed",  # ... and committed
    # (upgrade) a schema 3 replica, or a replica file of an older format, copied into a build,
    # before its switch
    "carry-over:copied",
)


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


def describe_os_error(err: OSError, *, path: Path, action: str, consequence: str) -> StoreError:
    """Turn a file-system error about ``path`` into a StoreError in the words of
    ``describe_error``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        message = (
            f"disk full: {consequence}. {path} could not be written; free space on its file "
            f"system (old logs, old backups) and try again. Could not {action}."
        )
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message = (
            f"cannot write {path}: the file system is read-only or the permissions forbid it, so "
            f"could not {action}: {consequence}. Check that the data partition is mounted "
            f"read-write and that its files belong to the kiosk's user."
        )
    else:
        message = f"could not {action}: {path}: {err.strerror or err}; {consequence}."
    return StoreError(message, path=path, code=errno.errorcode.get(err.errno or 0))


def sqlite_uri(path: Path, *, readonly: bool) -> str:
    """``path`` as a SQLite URI (``file:``, absolute, quoted), read-only with ``mode=ro``."""
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}"
    return f"{uri}?mode=ro" if readonly else uri


# -- the replica files beside the journal ----------------------------------------------------------

_FILE_ID = re.compile(r"[0-9a-f]{32}")
_SIDECARS = ("", "-wal", "-shm", "-journal")


class ReplicaFiles:
    """The replica's files beside the journal database ``database`` (see the module docstring):
    their names, the pointer, cleanup. Touches nothing until asked."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self.pointer = self.database.with_name(f"{self.database.name}-replica")
        self.lock_path = self.database.with_name(f"{self.database.name}-replica.lock")
        self._prefix = f"{self.database.name}-replica-"

    def new_path(self) -> Path:
        """A name for a new replica file, never used before (a UUIDv7: time-ordered, random)."""
        return self.database.with_name(f"{self._prefix}{uuid7().hex}")

    def signature(self) -> tuple[int, int, int, int] | None:
        """What ``stat`` says of the pointer (inode, sizes and times), None when there is none:
        a replaced pointer is a new file, so a switch changes this. Raises OSError when the pointer
        cannot be looked at (a folder the process may not read)."""
        try:
            info = os.stat(self.pointer)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def current(self) -> Path | None:
        """The replica file the pointer names (it may have gone since), None when there is no
        pointer. Raises OSError when it cannot be read, ValueError when it names anything but a
        replica file of this database (tampering, or a copied folder)."""
        try:
            text = self.pointer.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise ValueError(f"{self.pointer} does not name a replica file") from None
        if not (text.startswith(self._prefix) and _FILE_ID.fullmatch(text[len(self._prefix) :])):
            raise ValueError(f"{self.pointer} does not name a replica file of {self.database.name}")
        return self.database.with_name(text)

    def point_at(self, replica: Path, *, on_written: Callable[[], None] | None = None) -> None:
        """Make the pointer name ``replica``, atomically and durably (``files.write_atomically``):
        readers see the old name or the new one, never a mix. ``on_written`` runs once the new
        pointer is on disk under its temporary name, before the rename. Raises OSError."""
        write_atomically(
            self.pointer,
            f"{replica.name}\n".encode("ascii"),
            mode=0o644,
            check=None if on_written is None else (lambda _tmp: on_written()),
        )

    def leftovers(self, keep: Path | None) -> list[Path]:
        """Replica files (with their -wal, -shm, -journal) of this database other than ``keep``:
        superseded ones, and builds a killed process left behind; and pointers a killed writer
        left half-written (``.kiosk.db-replica.<pid>.tmp``). Names that are not exactly one of
        these are never listed."""
        keep_id = None if keep is None else keep.name[len(self._prefix) :]
        found = []
        try:
            names = os.listdir(self.database.parent)
        except FileNotFoundError:
            return []
        pointer_tmp = re.compile(rf"\.{re.escape(self.pointer.name)}\.[0-9]+\.tmp")
        for name in names:
            if pointer_tmp.fullmatch(name):
                found.append(self.database.with_name(name))
                continue
            if not name.startswith(self._prefix):
                continue
            rest = name[len(self._prefix) :]
            file_id, suffix = rest[:32], rest[32:]
            if _FILE_ID.fullmatch(file_id) and suffix in _SIDECARS and file_id != keep_id:
                found.append(self.database.with_name(name))
        return sorted(found)

    def remove_leftovers(self, keep: Path | None) -> list[Path]:
        """Delete ``leftovers(keep)``; only while holding the writers' lock (no build of another
        process can be among them then). A reader that still has one attached reads on from its
        open descriptor. Returns what was deleted."""
        removed = []
        for path in self.leftovers(keep):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed


class WriterLock:
    """The replica writers' lock: ``flock`` on ``kiosk.db-replica.lock`` (created if missing).
    Held by one process at a time, dropped by the kernel when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds for another process to drop it.
        Raises TimeoutError when it did not, OSError when the lock file cannot be opened."""
        if self._fd is not None:
            return
        # flock needs no write access: a read-only descriptor will do.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + max(0.0, wait_s)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"another process (a sync agent) is writing the replica beside "
                            f"{self.path.name[: -len('-replica.lock')]} and held "
                            f"{self.path} for more than {wait_s:g} s"
                        ) from None
                    time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock


def replica_format(conn: sqlite3.Connection, schema: str = "main") -> int:
    """The ``PRAGMA user_version`` of the replica file attached as ``schema`` (``main``: the
    connection's own file). Raises sqlite3.Error when it is not a database."""
    (version,) = conn.execute(f"PRAGMA {schema}.user_version").fetchone()
    return int(version)


class ReplicaBuild:
    """A new replica file being built beside the journal, by the process holding the writers'
    lock: a connection of its own, tuned to load rows fast (rollback journal in memory, no fsync
    until it is sealed, foreign keys off while pages that may be inconsistent go in), then indexed,
    sealed (WAL, fsynced) and switched in by the pointer (``publish``), or abandoned (deleted).

    Nothing here is the journal's: a build holds no lock of ``kiosk.db``. Methods raise
    sqlite3.Error and OSError (the caller turns them into ``StoreError``)."""

    def __init__(
        self,
        files: ReplicaFiles,
        lock: WriterLock,
        path: Path,
        conn: sqlite3.Connection,
        on_phase: PhaseHook | None,
    ) -> None:
        self.files = files
        self.path = path
        self.conn: sqlite3.Connection | None = conn
        self._lock = lock
        self._on_phase = on_phase
        # A descriptor of our own for fdatasync, closed only after the connection: closing any
        # descriptor of a SQLite file drops that process's locks on it (POSIX locks).
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._synced_bytes = 0

    @classmethod
    def start(
        cls,
        files: ReplicaFiles,
        lock: WriterLock,
        *,
        wait_s: float,
        on_phase: PhaseHook | None = None,
    ) -> ReplicaBuild:
        """Take the writers' lock (up to ``wait_s`` s), delete what killed builds left behind,
        create a new replica file with its tables and no secondary index. Raises TimeoutError
        when another writer keeps the lock."""
        lock.acquire(wait_s)
        try:
            files.remove_leftovers(keep=_current_or_none(files))
            path = files.new_path()
            conn = sqlite3.connect(
                sqlite_uri(path, readonly=False),
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode = MEMORY")
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute(f"PRAGMA cache_size = -{BUILD_CACHE_KIB}")
                conn.execute("PRAGMA foreign_keys = OFF")
                conn.execute("BEGIN")
                for statement in REPLICA_SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(REPLICA_FORMAT)}")
                conn.execute("COMMIT")
                build = cls(files, lock, path, conn, on_phase)
            except BaseException:
                conn.close()
                _remove_file(path)
                raise
        except BaseException:
            lock.release()
            raise
        build.phase("build:started")
        return build

    def phase(self, name: str) -> None:
        if self._on_phase is not None:
            self._on_phase(name)

    def live(self) -> sqlite3.Connection:
        if self.conn is None:
            raise sqlite3.OperationalError(f"the replica build {self.path} was closed")
        return self.conn

    def bound_unsynced(self) -> None:
        """Sync what was written since the last sync when it is ``BUILD_SYNC_BYTES`` or more (see
        there why). Raises OSError."""
        if self._fd is None:
            return
        size = os.fstat(self._fd).st_size
        if size - self._synced_bytes >= BUILD_SYNC_BYTES:
            os.fdatasync(self._fd)
            self._synced_bytes = size

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def add_indexes(self, *, unique_codes: bool) -> None:
        """Build the secondary indexes from the rows in (``REPLICA_INDEXES``), and with
        ``unique_codes`` the unique code index (raises sqlite3.IntegrityError when two members
        share a code). Each is skipped if it exists."""
        conn = self.live()
        statements = [*REPLICA_INDEXES, *((REPLICA_CODE_INDEX,) if unique_codes else ())]
        for statement in statements:
            conn.execute(statement.replace("INDEX ", "INDEX IF NOT EXISTS ", 1))

    def publish(self) -> float:
        """Seal the file (WAL, ``synchronous=NORMAL`` from now on, fsynced) and switch the pointer
        to it; then delete the files it supersedes and drop the writers' lock. Returns how long
        the switch itself took (ms): the pointer's write, rename and folder fsync. Until the rename
        every reader uses the previous replica; after it, the new one. Raises sqlite3.Error and
        OSError (then nothing was switched: the build is abandoned by the caller)."""
        conn = self.live()
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{self.path} cannot use write-ahead logging ({mode})")
        conn.close()  # the last connection: checkpointed, its -wal removed
        self.conn = None
        assert self._fd is not None
        os.fsync(self._fd)
        self._close_fd()
        self.phase("build:sealed")
        started = time.perf_counter()
        self.files.point_at(self.path, on_written=lambda: self.phase("switch:pointer-written"))
        switch_ms = (time.perf_counter() - started) * 1e3
        self.phase("switch:done")
        try:
            self.files.remove_leftovers(keep=self.path)
        except OSError as err:  # switched all the same; the next build tries again
            log.warning("could not delete superseded replica files beside %s: %s",
                        self.files.database, err)  # fmt: skip
        self.phase("cleanup:done")
        self._lock.release()
        return switch_ms

    def abandon(self) -> None:
        """Close and delete the file, drop the writers' lock. Safe to call more than once, and
        after ``publish`` (then it does nothing)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._close_fd()
        if self._lock.held:
            with contextlib.suppress(OSError, ValueError):
                if self.files.current() != self.path:
                    _remove_file(self.path)
            self._lock.release()


def _tidy_replica(path: Path) -> None:
    """Open and close ``path`` read-write once: if no other process has it open, SQLite then
    folds its -wal into it and removes the -wal and -shm (a read-only attachment, the last to
    close, leaves them). Best effort, never raises."""
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"{sqlite_uri(path, readonly=False)}?mode=rw", uri=True, timeout=0)
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # opens the file and its WAL
        finally:
            conn.close()


def _remove_file(path: Path) -> None:
    for suffix in _SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _current_or_none(files: ReplicaFiles) -> Path | None:
    """The replica file in use; None when there is none or the pointer is unreadable (then the
    cleanup keeps nothing: no reader can be using what no pointer names)."""
    try:
        return files.current()
    except (OSError, ValueError):
        return None


# A row hash split in two halves whose sums cannot overflow SQLite's 64-bit integers (see
# replica_sums); the replica's SQL sums affected rows the same way (kiosk.data.replica).
SUM_HALVES = "SUM(row_hash & 4294967295), SUM(row_hash >> 32)"
_MASK64 = (1 << 64) - 1


def combine_halves(low: int, high: int) -> int:
    """The sum of row hashes modulo 2**64 from the sums of their halves (``SUM_HALVES``)."""
    return ((high << 32) + low) & _MASK64


def replica_sums(conn: sqlite3.Connection, schema: str = "main") -> tuple[int, int | None]:
    """Row count and sum of row hashes modulo 2**64 (``sync.protocol.checksum``'s number) of the
    replica in ``schema`` of ``conn``; the sum is None when a row has no hash (loaded before
    schema 3). A full read of every row table.

    Summed in SQL, about three times faster than streaming the hashes through Python: each hash
    is split into its low 32 bits (unsigned) and its high 32 bits (signed, an arithmetic shift),
    whose sums cannot overflow below 2**31 rows; recombined modulo 2**64 they give exactly the sum
    of the hashes (tests compare with ``sync.protocol.checksum``)."""
    count = low = high = 0
    missing = False
    for table in REPLICA_KIND_TABLES.values():
        rows, hashed, low_sum, high_sum = conn.execute(
            f"SELECT COUNT(*), COUNT(row_hash), {SUM_HALVES} FROM {schema}.{table}"  # noqa: S608
        ).fetchone()
        count += rows
        missing = missing or hashed != rows
        low += low_sum or 0
        high += high_sum or 0
    return count, None if missing else combine_halves(low, high)


def record_totals(conn: sqlite3.Connection, count: int, total: int | None) -> None:
    """Keep the replica's own record of its row count and hash sum in ``replica_meta`` of
    ``conn``'s file (``total`` None: unknown, the record is removed)."""
    conn.execute(
        "INSERT INTO replica_meta (key, value) VALUES ('count', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(int(count)),),
    )
    if total is None:
        conn.execute("DELETE FROM replica_meta WHERE key = 'checksum'")
    else:
        conn.execute(
            "INSERT INTO replica_meta (key, value) VALUES ('checksum', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (f"{total:016x}",),
        )


def foreign_key_problem(conn: sqlite3.Connection) -> str | None:
    """The first broken reference in ``conn``'s replica file, in words (None: none). A full check
    (every membership and plan window looked up): for a build, before it is switched in."""
    row = conn.execute("PRAGMA foreign_key_check").fetchone()
    if row is None:
        return None
    table, rowid, parent, _fk = row
    what = {"memberships": "a membership", "plan_windows": "a plan's opening window"}.get(
        str(table), f"a row of {table}"
    )
    return f"{what} (rowid {rowid}) refers to a row of {parent} that is not there"


_LEGACY_COPY = {
    "plans": "id, name, row_hash",
    "plan_windows": "plan_id, weekday, start_minute, end_minute",
    "members": "id, organization_id, first_name, last_name, status, is_staff, code_hash, row_hash",
    "memberships": (
        "id, member_id, plan_id, type, start_date, end_date, remaining_classes, row_hash"
    ),
    # Format 2 and later; a source without the table (schema 3, format 1) holds no passes.
    "passes": "id, member_id, organization_id, public_key, period_s, status, row_hash",
    "opening_hours": "id, weekday, open_minute, close_minute, row_hash",
    "closures": "id, start_date, end_date, reason, row_hash",
}


def _copy_legacy_replica(build: ReplicaBuild, database: Path) -> int:
    """Fill ``build`` with the replica held in ``database``'s tables of ``_LEGACY_COPY``: a
    journal database of schema 3, or a replica file of an older format (the same tables and
    columns), read in one snapshot (rowid order kept: it is the cloud's order), with its indexes,
    checks and totals (tables it does not have, such as ``passes`` before format 2, stay empty;
    columns it does not have, such as a plan's visit limit before format 3, stay NULL). Changes
    it had staged are not copied (the next pull asks for them again). Returns the member count.
    Raises sqlite3.Error (IntegrityError for broken rules)."""
    conn = build.live()
    conn.execute("ATTACH DATABASE ? AS legacy", (sqlite_uri(database, readonly=True),))
    try:
        conn.execute("BEGIN")
        try:
            present = {
                str(name)
                for (name,) in conn.execute(
                    "SELECT name FROM legacy.sqlite_master WHERE type = 'table'"
                )
            }
            for table, columns in _LEGACY_COPY.items():
                if table not in present:
                    continue
                conn.execute(
                    f"INSERT INTO main.{table} ({columns})"  # noqa: S608
                    f" SELECT {columns} FROM legacy.{table} ORDER BY rowid"
                )
            conn.execute(
                "INSERT INTO main.replica_meta (key, value) SELECT key, value"
                " FROM legacy.replica_meta WHERE key IN ('version', 'synced_at', 'code_salt')"
            )
            conn.execute("COMMIT")
        except BaseException:
            end_quietly(conn, "ROLLBACK")
            raise
    finally:
        conn.execute("DETACH DATABASE legacy")
    build.add_indexes(unique_codes=True)
    if (problem := foreign_key_problem(conn)) is not None:
        raise sqlite3.IntegrityError(problem)
    count, total = replica_sums(conn)
    record_totals(conn, count, total)
    (members,) = conn.execute("SELECT COUNT(*) FROM members").fetchone()
    return int(members)


def _usable_replica(path: Path) -> bool:
    """True when ``path`` is a replica file of this code's format, or of an older one it carries
    over (``REPLICA_CARRY_OVER_FORMATS``)."""
    found = _file_format(path)
    return found == REPLICA_FORMAT or found in REPLICA_CARRY_OVER_FORMATS


def _file_format(path: Path) -> int | None:
    """The format (``PRAGMA user_version``) of the replica file ``path``, opened read-only and
    closed; None when it is missing or not a database."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(sqlite_uri(path, readonly=True), uri=True)
        try:
            return replica_format(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def replica_sql_in(schema: str, statement: str) -> str:
    """A ``CREATE TABLE`` of ``REPLICA_SCHEMA`` made to create its table in the attached
    ``schema``."""
    assert statement.lstrip().startswith("CREATE TABLE ")
    return statement.replace("CREATE TABLE ", f"CREATE TABLE {schema}.", 1)


# -- the connection --------------------------------------------------------------------------------


class Database:
    """One connection to the door's database and the transactions everything else runs in.

    ``kiosk.data.store.Store`` is this plus its tables (``Journal``, ``Replica``, ``SyncRecords``);
    create it with ``Store.open``, close it with ``close()`` or ``with``. Safe to share between
    threads of one process (calls are serialised by a lock); each process opens its own. Every
    method raises ``StoreError`` on database failures, including a call after ``close()``.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        busy_timeout_ms: int,
        on_replica_phase: PhaseHook | None = None,
    ) -> None:
        """Internal: use ``Store.open``, which configures and migrates the connection."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._readonly = readonly
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._replica_files = ReplicaFiles(path)
        self._on_replica_phase = on_replica_phase
        # The replica attached as REPLICA: its file (None: the empty one in memory), the pointer's
        # signature when it was chosen, and how many times it was switched (data_version).
        self._replica_attached = False
        self._replica_file: Path | None = None
        self._replica_signature: tuple | None = None
        self._replica_switches = 0
        self._replica_complaint: str | None = None

    # -- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        readonly: bool = False,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        on_replica_phase: PhaseHook | None = None,
    ) -> Self:
        """Open (and if needed create and migrate) the database at ``path``, with the replica file
        in use attached (an empty replica when there is none yet or it cannot be read: logged).

        Read-write: creates the parent folder and the file if missing, switches to WAL with
        ``synchronous=FULL`` and foreign keys, then applies pending migrations, one transaction
        each (a replica of schema 3 or older is carried over into a replica file before
        migration 4; see the module docstring). Read-only (the owner page): opens an existing file
        with ``mode=ro``, never creates, never migrates. ``busy_timeout_ms`` is how long a write
        waits for another process's. ``on_replica_phase`` is told each phase of a replica build
        and switch this store makes (tests and the bench observe them; it must not raise).

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
            # A URI in both cases, so that ATTACH takes one too (the replica, read-only).
            conn = sqlite3.connect(
                sqlite_uri(path, readonly=readonly),
                uri=True,
                timeout=timeout_s,
                isolation_level=None,
                check_same_thread=False,
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
        opened = cls(
            conn,
            path,
            readonly=readonly,
            busy_timeout_ms=busy_timeout_ms,
            on_replica_phase=on_replica_phase,
        )
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
                self._follow_replica(conn)
                return
            mode = use_wal(conn, self._busy_timeout_ms)
            if mode != "wal":
                raise StoreError(
                    f"{self._path} cannot use write-ahead logging (journal mode stayed {mode}); "
                    f"the kiosk's three processes need it. Keep the database on a local file "
                    f"system (not a network share).",
                    path=self._path,
                )
            # WAL with FULL syncs the log on every commit: a committed check-in survives power loss.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            apply_migrations(conn, target=min(LEGACY_REPLICA_VERSION, LATEST_VERSION))
            if schema_version(conn) == LEGACY_REPLICA_VERSION:
                self._carry_replica_over(conn)
            if LEGACY_REPLICA_VERSION + 1 in apply_migrations(conn):
                # A new file went through the replica's old tables too: compact it at once.
                self._reclaim_space(conn, fresh=version == 0)
            self._carry_format_over()
            self._follow_replica(conn)

    def close(self) -> None:
        """Close the connection. Safe to call more than once."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()
                if not self._readonly and self._replica_file is not None:
                    _tidy_replica(self._replica_file)

    # -- the replica file beside the journal -----------------------------------------------------

    @property
    def replica_file(self) -> Path | None:
        """The replica file this store reads (None: none yet, or it could not be read; the store
        then reads an empty replica)."""
        return self._replica_file

    def follow_replica(self) -> bool:
        """Look at the pointer (one ``stat``) and, if the replica was switched since, attach the
        new file instead of the old one; True when the replica in use changed. Cheap enough for
        every frame of the door (microseconds when nothing changed, about a millisecond for a
        switch). Raises StoreError only when not even the empty replica can be attached."""
        with self._lock, self._guard("open the replica", "the replica in use is unchanged"):
            return self._follow_replica(self._live())

    def _follow_replica(self, conn: sqlite3.Connection) -> bool:
        """``follow_replica`` under the lock, outside any transaction. A pointer that cannot be
        read, or names a file that cannot be used, leaves the empty replica attached and is
        logged (once per pointer): the journal keeps working and the sync agent pulls again."""
        try:
            signature = self._replica_files.signature()
        except OSError as err:
            self._complain(f"cannot look at {self._replica_files.pointer}: {err.strerror}")
            signature = self._replica_signature  # keep what is attached
        if self._replica_attached and signature == self._replica_signature:
            return False
        target: Path | None = None
        if signature is not None:
            try:
                target = self._replica_files.current()
            except (OSError, ValueError) as err:
                self._complain(f"cannot use the replica pointer: {err}")
        if self._replica_attached and target == self._replica_file and target is not None:
            self._replica_signature = signature
            return False
        if self._replica_attached:
            try:
                conn.execute(f"DETACH DATABASE {REPLICA}")
            except sqlite3.OperationalError as err:
                # A statement of this connection still reads it; try again next time.
                log.debug("cannot switch the replica of %s yet: %s", self._path, err)
                return False
            self._replica_attached = False
        if target is not None and not self._attach_file(conn, target):
            target = None
        if target is None:
            conn.execute(f"ATTACH DATABASE ':memory:' AS {REPLICA}")
            for statement in REPLICA_SCHEMA:
                conn.execute(replica_sql_in(REPLICA, statement))
        else:
            self._replica_complaint = None
        self._replica_attached = True
        self._replica_file = target
        self._replica_signature = signature
        self._replica_switches += 1
        return True

    def _attach_file(self, conn: sqlite3.Connection, target: Path) -> bool:
        """Attach the replica file ``target`` read-only; False (logged, nothing attached) when it
        is missing, not a database or of another format."""
        try:
            conn.execute(f"ATTACH DATABASE ? AS {REPLICA}", (sqlite_uri(target, readonly=True),))
        except sqlite3.Error as err:
            self._complain(f"cannot open the replica file {target}: {err}")
            return False
        try:
            found = replica_format(conn, REPLICA)
            problem = None if found == REPLICA_FORMAT else f"format {found}, not {REPLICA_FORMAT}"
        except sqlite3.Error as err:
            problem = str(err)
        if problem is None:
            return True
        self._complain(f"cannot use the replica file {target}: {problem}")
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"DETACH DATABASE {REPLICA}")
        return False

    def _complain(self, why: str) -> None:
        if why != self._replica_complaint:
            self._replica_complaint = why
            log.error(
                "%s; reading an empty replica until the sync agent pulls it again (check-ins are "
                "recorded as before)",
                why,
            )

    def _carry_replica_over(self, conn: sqlite3.Connection) -> None:
        """Before migration 4: copy the replica of schema 3 (tables of this file) into a replica
        file and switch to it, unless a usable replica file is already in use beside it (a
        restored backup keeps the newer replica) or there is nothing to carry. Best effort: a
        failure is logged and the sync agent pulls the replica again; the journal is untouched."""
        (rows,) = conn.execute(
            "SELECT (SELECT COUNT(*) FROM members) + (SELECT COUNT(*) FROM plans)"
            " + (SELECT COUNT(*) FROM opening_hours) + (SELECT COUNT(*) FROM closures)"
            " + (SELECT COUNT(*) FROM replica_meta)"
        ).fetchone()
        if not rows:
            return
        files = self._replica_files
        lock = WriterLock(files.lock_path)
        build: ReplicaBuild | None = None
        try:
            lock.acquire(CARRY_OVER_WAIT_S)
            current = _current_or_none(files)
            if current is not None and _usable_replica(current):
                log.info(
                    "%s: schema 3 replica left behind, the replica file %s is newer",
                    self._path,
                    current.name,
                )
                return
            started = time.perf_counter()
            build = ReplicaBuild.start(files, lock, wait_s=0, on_phase=self._on_replica_phase)
            members = _copy_legacy_replica(build, self._path)
            build.phase("carry-over:copied")
            build.publish()
        except (sqlite3.Error, OSError, TimeoutError, ValueError) as err:
            log.error(
                "%s: could not carry the replica over into a file of its own (%s); the sync agent "
                "will pull it again (a fresh snapshot). The journal is unaffected.",
                self._path,
                err,
            )
            if build is not None:
                build.abandon()
            return
        finally:
            lock.release()
        log.warning(
            "%s: replica carried over into %s (%d members) in %.1f s, for schema 4: the replica "
            "now lives in a file of its own",
            self._path,
            build.path.name,
            members,
            time.perf_counter() - started,
        )

    def _carry_format_over(self) -> None:
        """A replica file of an older format (``REPLICA_CARRY_OVER_FORMATS``, e.g. one made before
        phone passes) is copied into a new file of this format and switched in, so the door keeps
        its members across the upgrade instead of reading an empty replica until the next pull.
        Done by whichever read-write process opens first, under the writers' lock; a process that
        finds the lock held goes on without waiting (the other one carries it over, or builds a
        snapshot, which is of this format anyway). Readers keep the old file until the switch,
        then follow the pointer. Best effort: a failure is logged and the sync agent takes a
        fresh snapshot; the journal is never touched. A replica file of this format with files
        a killed writer left beside it: those are deleted (``_remove_superseded``)."""
        files = self._replica_files
        current = _current_or_none(files)
        found = None if current is None else _file_format(current)
        if found not in REPLICA_CARRY_OVER_FORMATS:
            if current is not None and found == REPLICA_FORMAT and files.leftovers(keep=current):
                self._remove_superseded(current)
            return
        lock = WriterLock(files.lock_path)
        build: ReplicaBuild | None = None
        try:
            try:
                lock.acquire(0)
            except TimeoutError:
                log.info("%s: another process is writing the replica; it carries it over", current)
                return
            current = _current_or_none(files)  # again, under the lock
            found = None if current is None else _file_format(current)
            if current is None or found not in REPLICA_CARRY_OVER_FORMATS:
                return
            started = time.perf_counter()
            build = ReplicaBuild.start(files, lock, wait_s=0, on_phase=self._on_replica_phase)
            members = _copy_legacy_replica(build, current)
            build.phase("carry-over:copied")
            build.publish()
        except (sqlite3.Error, OSError, ValueError) as err:
            log.error(
                "%s: could not carry the replica of format %s over into format %d (%s); the sync "
                "agent will pull it again (a fresh snapshot). The journal is unaffected.",
                current,
                found,
                REPLICA_FORMAT,
                err,
            )
            if build is not None:
                build.abandon()
            return
        finally:
            lock.release()
        log.warning(
            "%s: replica of format %s carried over into %s (%d members, format %d) in %.1f s",
            self._path,
            found,
            build.path.name,
            members,
            REPLICA_FORMAT,
            time.perf_counter() - started,
        )

    def _remove_superseded(self, current: Path) -> None:
        """Delete replica files other than ``current`` that a writer killed after its switch
        (or during a build) left behind, when no other process holds the writers' lock (it may
        be building one of them): otherwise only the next build would, and a superseded replica
        can be as large as the one in use. Best effort, logged."""
        lock = WriterLock(self._replica_files.lock_path)
        try:
            lock.acquire(0)
            if _current_or_none(self._replica_files) != current:
                return  # switched meanwhile: its writer cleaned up
            if removed := self._replica_files.remove_leftovers(keep=current):
                log.info("%s: deleted %d superseded replica file(s)", self._path, len(removed))
        except (OSError, TimeoutError) as err:
            log.debug("%s: superseded replica files left for the next build: %s", self._path, err)
        finally:
            lock.release()

    def _reclaim_space(self, conn: sqlite3.Connection, *, fresh: bool) -> None:
        """After migration 4 dropped the replica's tables: give their pages back to the file
        system when they are many, or the file is new (VACUUM rewrites the journal alone; seconds
        at most, milliseconds for a new file). A new file is not left with free pages a backup
        would copy for nothing."""
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
        if not free or (not fresh and int(free) * int(page) < RECLAIM_BYTES):
            return
        try:
            conn.execute("VACUUM")
        except sqlite3.Error as err:  # the space stays inside the file, reused by the journal
            log.warning("%s: could not give back the old replica's space: %s", self._path, err)
            return
        if not fresh:
            log.info("%s: gave back %.0f MB the old replica used", self._path, free * page / 2**20)

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
        """A number that changes whenever another connection (another process) committed to the
        journal database or to the replica in use, or the replica was switched, and stays the
        same otherwise (SQLite's ``PRAGMA data_version`` of both, and this store's count of
        switches). The owner page reads it to know, in microseconds, whether anything it shows
        can have changed."""
        with self._lock, self._guard("read the data version", "nothing was changed"):
            conn = self._live()
            self._follow_replica(conn)
            (main,) = conn.execute("PRAGMA main.data_version").fetchone()
            (replica,) = conn.execute(f"PRAGMA {REPLICA}.data_version").fetchone()
        return int(main) + (int(replica) << 40) + (self._replica_switches << 80)

    # -- plumbing --------------------------------------------------------------------------------

    def _refuse_if_readonly(self, action: str, consequence: str) -> None:
        """The replica's writers use connections of their own, which a read-only store must not
        open: refused here as SQLite refuses a write on the read-only connection."""
        if self._readonly:
            raise StoreError(
                f"{self._path} is opened read-only here, so this process cannot {action}: "
                f"{consequence}. Writes belong to the scanner and the sync agent, which open it "
                f"read-write.",
                path=self._path,
                code="SQLITE_READONLY",
            )

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
        except TimeoutError as err:  # the replica writers' lock (before OSError: a subclass)
            raise StoreError(
                f"{err}, so could not {action}: {consequence}.",
                path=self._path,
                code="SQLITE_BUSY",
            ) from err
        except OSError as err:  # the replica's files: the pointer, the lock, an fsync
            where = Path(err.filename) if err.filename else self._path
            raise describe_os_error(
                err, path=where, action=action, consequence=consequence
            ) from err

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot of each file (the
        journal's and the replica's, each taken when the transaction first reads it), on the
        replica in use now (``follow_replica`` first)."""
        with self._lock, self._guard(action, "nothing was changed"):
            conn = self._live()
            self._follow_replica(conn)
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
